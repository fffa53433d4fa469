-- Shape one attempt for the backend Envoy chose: path, body, auth header; and, when the
-- backend speaks the other chat API than the client, translate the request and then the
-- answer (translate.lua, streamed event by event). Runs on the router's upstream filter
-- chain, again on every retry, on headers the previous attempt rewrote: so it derives
-- everything from the client's original path and model (dynamic metadata) and from the
-- scratch headers header_mutation has just set from the chosen endpoint's metadata. The
-- body the client sent is kept by the router for retries; each attempt translates it anew.
--
-- `config` is a table the renderer (render/envoy.py) puts in front of this file, on its
-- first line so that line numbers in Lua's errors still match this file:
--   config.metadata_namespace   dynamic metadata namespace: the client's `model` and `path`;
--                               this filter keeps the attempt's translation there
--   config.credentials_env      environment variable naming the credentials directory
--   config.api_paths            client API -> its path after `/v1`
--   config.default_max_tokens   max_tokens for an OpenAI request that sets none (Anthropic
--                               requires it)
--   config.scratch              scratch header names by field: api, auth, credentials,
--                               path_base, query, model, headers (`name:value,...` every
--                               request carries), chat_call (`whole|streamed`: the chat
--                               call's path after path_base, when it names the model
--                               instead of the body), body (a JSON object of fields every
--                               chat request body carries; null: never), signing
--                               (`service:region`: sign with SigV4), host (the backend's,
--                               for the signature), converse (`whole|streamed`: Bedrock's
--                               Converse calls, through which a client whose API the
--                               backend does not speak is served), errors (`cloud`: the
--                               backend answers errors in its cloud's format, not its API's)
--   config.refusal_marker       set on a provider's 401 or 403 (answer.lua)
-- json.lua, translate.lua, converse.lua, sha256.lua, sigv4.lua and event_stream.lua follow
-- this file in the same chunk.

local directory = os.getenv(config.credentials_env) or "/etc/switchyard/credentials"
local keys, read_at = {}, {}

local function key(name)
  -- Re-read at most once a second: a rotated Secret shows up without a restart.
  -- A key not there yet is looked for again on the next request.
  local now = os.time()
  if read_at[name] ~= now or keys[name] == nil then
    local file = io.open(directory .. "/" .. name, "rb")
    if file ~= nil then
      keys[name] = file:read("*a")
      file:close()
    else
      keys[name] = nil
    end
    read_at[name] = now
  end
  return keys[name]
end

-- JSON, as far as rewriting the request's top-level `model` needs it. Envoy's Lua has no
-- JSON library, and decoding and re-encoding the body would change bytes the client sent
-- (number spellings, key order, escapes), so the body is scanned instead: the top-level
-- object's members are walked one by one, each value skipped whole, strings with their
-- escapes. Positions are byte indexes into the body, as Lua's string functions count.
-- Bodies run to megabytes and the scan blocks an Envoy worker, so it jumps from quote to
-- quote with plain finds (memchr) rather than matching a pattern at every byte.

local QUOTE, BACKSLASH = 34, 92
local OPEN = {[91] = true, [123] = true} -- '[' and '{'

local function fail(at, problem)
  error(string.format("request body at byte %d: %s", at, problem), 0)
end

-- The index of the first byte at or after `at` that is not JSON white space.
local function skip_space(text, at)
  return string.match(text, "^[ \t\r\n]*()", at)
end

-- The index just past the string that opens at `at` (a '"'). A quote closes it unless an
-- odd number of backslashes comes before it; the opening quote bounds that count.
local function skip_string(text, at)
  local position = at + 1
  while true do
    local quote = string.find(text, '"', position, true)
    if quote == nil then fail(at, "unterminated string") end
    local before = quote - 1
    while string.byte(text, before) == BACKSLASH do before = before - 1 end
    if (quote - 1 - before) % 2 == 0 then return quote + 1 end
    position = quote + 1
  end
end

-- The index just past the object or array that opens at `at`, found by depth. Brackets
-- count only between strings, so the text between one string and the next is searched.
local function skip_nested(text, at)
  local depth, position = 0, at
  while true do
    local quote = string.find(text, '"', position, true)
    local between = string.sub(text, position, (quote or #text + 1) - 1)
    local index = 1
    while true do
      local bracket = string.find(between, "[%[%]{}]", index)
      if bracket == nil then break end
      if OPEN[string.byte(between, bracket)] then depth = depth + 1 else depth = depth - 1 end
      if depth == 0 then return position + bracket end
      index = bracket + 1
    end
    if quote == nil then fail(at, "unterminated " .. string.sub(text, at, at)) end
    position = skip_string(text, quote)
  end
end

-- The index just past the value that starts at `at`.
local function skip_value(text, at)
  local first = string.byte(text, at)
  if first == QUOTE then return skip_string(text, at) end
  if OPEN[first] then return skip_nested(text, at) end
  -- A number, true, false or null: up to the next delimiter.
  local stop = string.match(text, '^[^,:{}%[%]"%s]+()', at)
  if stop == nil then fail(at, "a value was expected") end
  return stop
end

local NAME_ESCAPES = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
}

-- A member name as JSON means it: `"mod\u0065l"` is `model` too. Only ASCII can spell
-- `model`, so a `\uXXXX` beyond ASCII is kept as written, which never equals it.
local function member_name(raw)
  if not string.find(raw, "\\", 1, true) then return raw end
  local parts, position = {}, 1
  while true do
    local slash = string.find(raw, "\\", position, true)
    if slash == nil then break end
    parts[#parts + 1] = string.sub(raw, position, slash - 1)
    local kind = string.sub(raw, slash + 1, slash + 1)
    if kind == "u" then
      local code = tonumber(string.sub(raw, slash + 2, slash + 5), 16)
      if code ~= nil and code < 128 then
        parts[#parts + 1] = string.char(code)
      else
        parts[#parts + 1] = string.sub(raw, slash, slash + 5)
      end
      position = slash + 6
    else
      parts[#parts + 1] = NAME_ESCAPES[kind] or kind
      position = slash + 2
    end
  end
  parts[#parts + 1] = string.sub(raw, position)
  return table.concat(parts)
end

-- Where the values of the top-level object's members called `wanted` are: a list of
-- {first, past} byte ranges, usually one (JSON parsers disagree on which duplicate wins,
-- so every one is rewritten).
local function top_level_members(text, wanted)
  local found = {}
  local position = 1
  if string.sub(text, 1, 3) == "\239\187\191" then position = 4 end -- a UTF-8 BOM
  position = skip_space(text, position)
  if string.sub(text, position, position) ~= "{" then fail(position, "not an object") end
  position = skip_space(text, position + 1)
  if string.sub(text, position, position) == "}" then return found end
  while true do
    if string.sub(text, position, position) ~= '"' then
      fail(position, "a member name was expected")
    end
    local name_past = skip_string(text, position)
    local name = member_name(string.sub(text, position + 1, name_past - 2))
    position = skip_space(text, name_past)
    if string.sub(text, position, position) ~= ":" then fail(position, "':' expected") end
    local value_first = skip_space(text, position + 1)
    local value_past = skip_value(text, value_first)
    if name == wanted then found[#found + 1] = {value_first, value_past} end
    position = skip_space(text, value_past)
    local delimiter = string.sub(text, position, position)
    if delimiter == "}" then return found end
    if delimiter ~= "," then fail(position, "',' or '}' expected") end
    position = skip_space(text, position + 1)
  end
end

local STRING_ESCAPES = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                        ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}

-- `text` as a JSON string. UTF-8 passes as it is; quotes, backslashes and control
-- characters are escaped.
local function json_string(text)
  local escaped = string.gsub(text, '[%c"\\]', function(char)
    return STRING_ESCAPES[char] or string.format("\\u%04x", string.byte(char))
  end)
  return '"' .. escaped .. '"'
end

-- `text` with the value of every top-level `model` member replaced by `model`.
local function with_model(text, model)
  local spans = top_level_members(text, "model")
  if #spans == 0 then error("the request body has no top-level model", 0) end
  local parts, position = {}, 1
  for _, span in ipairs(spans) do
    parts[#parts + 1] = string.sub(text, position, span[1] - 1)
    parts[#parts + 1] = json_string(model)
    position = span[2]
  end
  parts[#parts + 1] = string.sub(text, position)
  return table.concat(parts)
end

-- `text` with `"stream_options":{"include_usage":true}` as its first member; nil when it has
-- stream_options of its own (a second member of that name would be read either way).
local function with_usage_asked(text)
  if #top_level_members(text, "stream_options") > 0 then return nil end
  local open = string.find(text, "{", 1, true) -- the object's own: the scan checked the body
  local next_member = skip_space(text, open + 1)
  local separator = string.sub(text, next_member, next_member) == "}" and "" or ","
  return string.sub(text, 1, open) .. '"stream_options":{"include_usage":true}' .. separator
    .. string.sub(text, open + 1)
end

-- The chat API a client path speaks ("openai" or "anthropic"), nil for any other path.
local function client_api(path)
  local bare = string.match(path or "", "^[^?]*")
  for api, api_path in pairs(config.api_paths) do
    if bare == "/v1" .. api_path then return api end
  end
  return nil
end

-- The body decoded, translated from the client's API to the backend's when they differ,
-- given the backend's model (none when its path names it) and fields, and encoded again.
local function rewritten_body(handle, from, to, model, model_in_path, fields, ask_usage)
  local body = handle:body()
  local request = json.decode(body:getBytes(0, body:length()))
  if type(request) ~= "table" or json.is_array(request) then error("the request body is not a JSON object", 0) end
  local rewritten, context = request, {}
  if from ~= to then
    rewritten, context = translate.request(from, to, request, config.default_max_tokens)
  end
  if ask_usage then
    if from == to then
      local options = type(rewritten.stream_options) == "table" and rewritten.stream_options or {}
      options.include_usage = true
      rewritten.stream_options = options
    end
    context.usage = true -- a translated stream reports it as the client's API does
  end
  if model_in_path then
    rewritten.model = nil
  else
    rewritten.model = (model ~= nil and model ~= "") and model or request.model
  end
  for name, value in pairs(fields) do
    if value == json.null then rewritten[name] = nil else rewritten[name] = value end
  end
  body:setBytes(json.encode(rewritten))
  return context
end

-- The backend's model and the request for stream usage written into the client's body as it
-- is, bytes the client sent kept; false when the body must be decoded instead (it has
-- stream_options of its own).
local function edited_in_place(handle, model, asked, ask_usage)
  local renamed = model ~= nil and model ~= "" and asked ~= nil and model ~= asked
  if not renamed and not ask_usage then return true end
  local body = handle:body()
  if body == nil or body:length() == 0 then return true end
  local text = body:getBytes(0, body:length())
  if ask_usage then
    text = with_usage_asked(text)
    if text == nil then return false end
  end
  if renamed then text = with_model(text, model) end
  body:setBytes(text)
  return true
end

-- Sign the attempt as it now stands (path, host, body) with SigV4: `signing` is
-- "<service>:<region>", `host` the backend's (set here: Envoy's own rewrite of the host
-- header comes after this filter), `text` the AWS shared-credentials file. Without credentials the
-- attempt goes unsigned, and the provider's 403 takes the backend out as a refused key would.
local function sign(handle, signing, host, text)
  if text == nil then return end
  local credentials, problem = sigv4_credentials(text)
  if credentials == nil then error("the backend's AWS credentials: " .. problem, 0) end
  local service, region = string.match(signing, "^([^:]+):(.*)$")
  local headers = handle:headers() -- fetched again: the body may have been read since
  headers:replace(":authority", host)
  local path, query = string.match(headers:get(":path"), "^([^?]*)%??(.*)$")
  local body = handle:body()
  local signed = sigv4_sign({
    method = headers:get(":method"),
    path = path,
    query = query,
    headers = {host = headers:get(":authority"), ["content-type"] = headers:get("content-type")},
    body = body ~= nil and body:getBytes(0, body:length()) or "",
  }, credentials, region, service, os.time())
  for name, value in pairs(signed) do headers:replace(name, value) end
end

local function shape(handle)
  local headers = handle:headers()
  local scratch = config.scratch
  local api = headers:get(scratch.api)
  local auth = headers:get(scratch.auth)
  local credentials = headers:get(scratch.credentials)
  local base = headers:get(scratch.path_base)
  local query = headers:get(scratch.query)
  local model = headers:get(scratch.model)
  local extra_headers = headers:get(scratch.headers) or ""
  local chat_call = headers:get(scratch.chat_call) or ""
  local fields = headers:get(scratch.body) or ""
  local signing = headers:get(scratch.signing) or ""
  local host = headers:get(scratch.host) or ""
  local converse_call = headers:get(scratch.converse) or ""
  local cloud_errors = headers:get(scratch.errors) == "cloud"
  for _, name in pairs(scratch) do
    headers:remove(name)
  end

  local metadata = handle:streamInfo():dynamicMetadata()
  local client = metadata:get(config.metadata_namespace) or {}
  local spoken = client_api(client["path"])
  if api == "" then api = nil end
  if spoken ~= nil and spoken ~= api and converse_call ~= "" then
    -- Its native call's path and body fields are not Converse's.
    api, chat_call, fields = "converse", converse_call, ""
  end
  local translating = spoken ~= nil and api ~= nil and spoken ~= api
  if base ~= nil and client["path"] ~= nil then
    local path
    if chat_call ~= "" then
      local whole, streamed = string.match(chat_call, "^([^|]*)|(.*)$")
      path = base .. (client["stream"] == true and streamed or whole)
    elseif translating then
      path = base .. config.api_paths[api]
    else
      path = base .. string.gsub(client["path"], "^/v1", "", 1)
    end
    if query ~= nil and query ~= "" then
      local separator = "?"
      if string.find(path, "?", 1, true) then separator = "&" end
      path = path .. separator .. query
    end
    headers:replace(":path", path)
  end
  local secret = nil
  if credentials ~= nil and credentials ~= "" then secret = key(credentials) end
  if secret ~= nil and signing == "" then
    local header, prefix = string.match(auth or "", "^([^:]+):(.*)$")
    headers:replace(header or "authorization", (prefix or "Bearer ") .. secret)
  end
  for name, value in string.gmatch(extra_headers, "([^,:]+):([^,]*)") do
    headers:replace(name, value)
  end
  -- What the answer needs: the API it comes back in, for this attempt only.
  metadata:set(config.metadata_namespace, "answer_api", translating and api or "")
  metadata:set(config.metadata_namespace, "answer_model", model or "")
  metadata:set(config.metadata_namespace, "cloud_errors", cloud_errors and "1" or "")
  -- An OpenAI stream reports usage only when asked: the gateway asks, to count the tokens,
  -- and answer.lua takes the answer's usage event away again.
  local ask_usage = spoken == "openai" and client["stream"] == true and client["usage_asked"] ~= true
  if translating or chat_call ~= "" or fields ~= ""
     or not edited_in_place(handle, model, client["model"], ask_usage) then
    -- Fetched again: the body may have been read since.
    handle:headers():replace("content-type", "application/json")
    local context = rewritten_body(handle, spoken or api, api, model, chat_call ~= "",
                                   fields ~= "" and json.decode(fields) or {}, ask_usage)
    -- Fetched again: what was fetched before the body was read is out of scope now.
    handle:streamInfo():dynamicMetadata():set(config.metadata_namespace, "stream_usage",
                                              context.usage and "1" or "")
  end
  if signing ~= "" then sign(handle, signing, host, secret) end
end

function envoy_on_request(handle)
  -- An error here must not send one backend's request shape to another, nor the client's
  -- model name to a provider: fail the attempt. A field the other API cannot carry is the
  -- client's to fix (400); anything else the local reply config makes a 502. Both in the
  -- format of the API the client spoke.
  local ok, problem = pcall(shape, handle)
  if not ok then
    if type(problem) == "table" and problem.refused ~= nil then
      handle:respond({[":status"] = "400"}, problem.refused)
    else
      handle:logErr("switchyard: " .. tostring(problem))
      handle:respond({[":status"] = "502"}, "switchyard could not shape the request")
    end
  end
end

-- The backend's answer in the client's API: errors whole, answers whole or event by event.
local function translate_answer(handle, headers, status, from, to, attempt)
  local stream_usage = attempt["stream_usage"] == "1"
  -- What a Converse answer lacks, read before the body (headers go out of scope then).
  local answer = {model = attempt["answer_model"], id = headers:get("x-amzn-requestid")}
  local content_type = headers:get("content-type") or ""
  if status == "200" and string.find(content_type, "text/event-stream", 1, true) then
    local feed = translate.stream(from, to, {usage = stream_usage})
    for chunk in handle:bodyChunks() do
      local ok, text = pcall(feed, chunk:getBytes(0, chunk:length()))
      if not ok then
        handle:logErr("switchyard: the provider's stream could not be translated: " .. tostring(text))
        text = ""
      end
      chunk:setBytes(text)
    end
    return
  end
  headers:remove("content-length")
  headers:replace("content-type", "application/json")
  local body = handle:body()
  local text = body ~= nil and body:getBytes(0, body:length()) or ""
  if status == "200" then
    local ok, translated = pcall(function()
      return json.encode(translate.response(from, to, json.decode(text), answer))
    end)
    if ok then
      text = translated
    else
      handle:logErr("switchyard: the provider's answer could not be translated: " .. tostring(translated))
      handle:headers():replace(":status", "502") -- fetched again: the body was read since
      text = translate.error(from, to, 502, "The provider's answer could not be translated.")
    end
  else
    text = translate.error(from, to, tonumber(status) or 502, text)
  end
  if body ~= nil then body:setBytes(text) end
end

-- An AWS event stream (Bedrock's InvokeModelWithResponseStream or ConverseStream) as
-- Anthropic's SSE, frame by frame as they arrive (`on_event` reads each event); through
-- `feed` (a translation) when given.
local function event_stream_answer(handle, headers, on_event, feed)
  headers:replace("content-type", "text/event-stream")
  headers:remove("content-length")
  local decode = event_stream_decoder()
  for chunk in handle:bodyChunks() do
    local ok, text = pcall(function()
      local sse = bedrock_stream_to_sse(decode(chunk:getBytes(0, chunk:length())), on_event)
      if feed ~= nil then return feed(sse) end
      return sse
    end)
    if not ok then
      handle:logErr("switchyard: the provider's event stream could not be read: " .. tostring(text))
      text = ""
    end
    chunk:setBytes(text)
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = headers:get(":status")
  if status == "401" or status == "403" then
    headers:replace(config.refusal_marker, status)
    return
  end
  local attempt = handle:streamInfo():dynamicMetadata():get(config.metadata_namespace) or {}
  local from = attempt["answer_api"] or ""
  local to = client_api(attempt["path"])
  local content_type = headers:get("content-type") or ""
  if status == "200" and string.find(content_type, "application/vnd.amazon.eventstream", 1, true) then
    -- Either stream becomes Anthropic's SSE first.
    local on_event = invoke_chunk_to_sse
    if from == "converse" then
      on_event = converse.stream({model = attempt["answer_model"], id = headers:get("x-amzn-requestid")})
    end
    local feed = nil
    if to ~= nil and to ~= "anthropic" then
      feed = translate.stream("anthropic", to, {usage = attempt["stream_usage"] == "1"})
    end
    event_stream_answer(handle, headers, on_event, feed)
    return
  end
  if from ~= "" then
    translate_answer(handle, headers, status, from, to, attempt)
  elseif attempt["cloud_errors"] == "1" and to ~= nil and not string.find(status, "^2") then
    -- The client's own API, but the cloud's error format: rewritten into the API's.
    headers:remove("content-length")
    headers:replace("content-type", "application/json")
    local body = handle:body()
    local text = body ~= nil and body:getBytes(0, body:length()) or ""
    if body ~= nil then body:setBytes(translate.error(to, to, tonumber(status) or 502, text)) end
  end
end
