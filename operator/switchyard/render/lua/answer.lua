-- What the listener does to every answer, in one Lua call (each filter's call costs as much
-- as its work here):
--
-- 1. A provider's 401 or 403 means it refused the gateway's key, not the client's request:
--    the client gets a gateway error instead, and never the provider's body (it may quote the
--    key, or name the organisation it belongs to). The backend shaper marks such an answer
--    with a header, which the retry policy has already seen pass: every backend was tried.
-- 2. Two things about a streamed answer that Envoy's own filters cannot see: when its first
--    event reached the client (time to first token), and, for an OpenAI client that did not
--    ask for stream usage, the usage event the gateway asked for on its behalf (the backend
--    shaper did, to count the tokens; sse_to_metadata has read it by now). That event is
--    taken away, so the client gets the stream it asked for. Any other answer passes
--    untouched, its body unread.
-- 3. The rate limit filter's 429 (it marks its own) is worded in the client's API: its
--    body, Retry-After, and that API's rate-limit headers for the limit that was hit,
--    instead of the filter's draft headers.
--
-- `config` is a table the renderer (render/envoy.py) puts in front of this file, on its
-- first line so that line numbers in Lua's errors still match this file:
--   config.metadata_namespace   dynamic metadata namespace: the client's `path`, `stream`
--                               and `usage_asked` (stream_options.include_usage)
--   config.marker               the header the backend shaper sets on a refusal
--   config.openai_body          the refusal in OpenAI's format
--   config.anthropic_body       the refusal in Anthropic's format (for /v1/messages)
--   config.usage_namespace      where the answer's usage goes; this filter adds the first
--                               event's time (ms since the epoch) as config.first_event_key
--   config.openai_path          OpenAI's chat path, the one API that reports stream usage
--                               only when asked
--   config.limits_namespace     where the clients filter put the client's limits; the
--                               limit hit goes there too, as config.limit_hit_key, for the
--                               operator's count of refusals
--   config.limited_marker       the header the rate limit filter sets on its 429s
--   config.limited              kind ("requests", "tokens") -> API -> the 429's body, a
--                               string.format of the client, its limit, the kind, seconds

local function refused(handle, headers, client)
  headers:remove(config.marker)
  headers:replace(":status", "502")
  headers:replace("content-type", "application/json")
  local body = config.openai_body
  if string.find(client["path"] or "", "/v1/messages", 1, true) == 1 then
    body = config.anthropic_body
  end
  handle:body(true):setBytes(body)
end

local DRAFT_HEADERS = {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}

local function limited(handle, headers, client)
  headers:remove(config.limited_marker)
  -- The draft headers describe the limit closest to being exceeded: here, the one hit.
  local limit = tonumber(string.match(headers:get("x-ratelimit-limit") or "", "^%s*(%d+)")) or 0
  local wait = math.max(1, tonumber(headers:get("x-ratelimit-reset") or "") or 60)
  for _, name in ipairs(DRAFT_HEADERS) do
    headers:remove(name)
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  local limits = metadata:get(config.limits_namespace) or {}
  local requests = limits["requests"]
  local kind = "tokens"
  if requests ~= nil and requests["requests_per_unit"] == limit then
    kind = "requests"
  end
  metadata:set(config.limits_namespace, config.limit_hit_key, kind)
  local anthropic = string.find(client["path"] or "", "/v1/messages", 1, true) == 1
  headers:replace("retry-after", tostring(wait))
  headers:replace("content-type", "application/json")
  if anthropic then
    local prefix = "anthropic-ratelimit-" .. kind
    headers:replace(prefix .. "-limit", tostring(limit))
    headers:replace(prefix .. "-remaining", "0")
    headers:replace(prefix .. "-reset", os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + wait))
  else
    headers:replace("x-ratelimit-limit-" .. kind, tostring(limit))
    headers:replace("x-ratelimit-remaining-" .. kind, "0")
    headers:replace("x-ratelimit-reset-" .. kind, wait .. "s")
  end
  local template = config.limited[kind][anthropic and "anthropic" or "openai"]
  handle:body(true):setBytes(string.format(template, client["client"] or "?", limit, kind, wait))
end

-- An OpenAI chunk that carries only usage: no choices, and a usage object.
local function usage_only(event)
  return string.find(event, '"choices"%s*:%s*%[%s*%]') ~= nil
    and string.find(event, '"usage"%s*:%s*{') ~= nil
end

-- Complete events of `text` but usage-only ones, and what follows the last complete event
-- (held until the rest of that event comes: a well-formed stream ends with an event's end).
local function without_usage(text)
  local kept, position = {}, 1
  while true do
    local stop = string.find(text, "\n\n", position, true)
    if stop == nil then break end
    local event = string.sub(text, position, stop + 1)
    if not usage_only(event) then kept[#kept + 1] = event end
    position = stop + 2
  end
  return table.concat(kept), string.sub(text, position)
end

local function metered(handle, client)
  local path = string.match(client["path"] or "", "^[^?]*")
  local hide = path == config.openai_path and client["usage_asked"] ~= true
  local timed, pending = false, ""
  for chunk in handle:bodyChunks() do
    local length = chunk:length()
    if length > 0 and not timed then
      timed = true
      -- Fetched here: what was fetched before the body was read is out of scope now.
      handle:streamInfo():dynamicMetadata():set(config.usage_namespace, config.first_event_key,
                                                handle:timestamp())
      -- The rest of the stream passes without this filter.
      if not hide then return end
    end
    if hide then
      local text = pending
      if length > 0 then text = text .. chunk:getBytes(0, length) end
      local kept
      kept, pending = without_usage(text)
      chunk:setBytes(kept)
    end
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local client = handle:streamInfo():dynamicMetadata():get(config.metadata_namespace) or {}
  if headers:get(config.marker) ~= nil then
    refused(handle, headers, client)
  elseif headers:get(config.limited_marker) ~= nil then
    limited(handle, headers, client)
  elseif client["stream"] == true
      and string.find(headers:get("content-type") or "", "text/event-stream", 1, true) then
    -- An error answers a stream request whole, as JSON: neither timed nor touched.
    metered(handle, client)
  end
end
