-- Who is calling: runs on every request before any provider is contacted. A client is
-- identified by its ServiceAccount token (verified by the jwt_authn filter in front of this
-- one), else by the SHA-256 digest of the API key it sends, in whichever header its SDK
-- uses. An unknown caller gets 401, a known one asking for a model it may not call 403,
-- both in the format of the API it spoke. The client's credential never goes upstream,
-- and the client is named in dynamic metadata for the access records.
-- A known client asking for `GET /v1/models` gets the models it may call, in the format of
-- the API it speaks (Anthropic's SDKs send `anthropic-version`).
-- A client with limits gets them in dynamic metadata, for the rate limit filter after this
-- one: per kind ("requests", "tokens"), its name as `<kind>_client` and the limit as
-- `<kind>`, in the form of that filter's descriptor override.
-- `config` (put in front by the renderer): keys (digest -> client), subjects (token sub ->
-- client), grants (client -> model -> "1"), served (model -> "1"), listings (client -> API
-- -> body), limits (client -> kind -> per minute), the metadata names, and the error
-- bodies; `sha256_hex` is defined after this file in the same chunk.

local CREDENTIAL_HEADERS = {"authorization", "x-api-key", "api-key"}
-- Keys seen before, so that a client's requests after its first cost no digest. Keys that
-- identify no one are never kept: what a stranger sends cannot grow it. The table lives as
-- long as this config: a rotated key is forgotten with the config that knew it.
local known = {}

local function presented_key(headers)
  local authorization = headers:get("authorization")
  if authorization ~= nil then
    local token = authorization:match("^[Bb]earer%s+(%S+)%s*$")
    if token ~= nil then
      return token
    end
  end
  return headers:get("x-api-key") or headers:get("api-key")
end

local function identify(handle, headers)
  local verified = handle:streamInfo():dynamicMetadata():get(config.token_namespace)
  local claims = verified and verified[config.token_key]
  local client = claims and claims.sub and config.subjects[claims.sub]
  if client then
    return client
  end
  local key = presented_key(headers)
  if key == nil then
    return nil
  end
  client = known[key]
  if client == nil then
    client = config.keys[sha256_hex(key)]
    if client ~= nil then
      known[key] = client
    end
  end
  return client
end

local function refuse(handle, status, bodies)
  local path = handle:headers():get(":path") or ""
  local body = bodies.openai
  if path == "/v1/messages" or path:sub(1, 13) == "/v1/messages?" or path:sub(1, 13) == "/v1/messages/" then
    body = bodies.anthropic
  end
  handle:respond({[":status"] = status, ["content-type"] = "application/json"}, body)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local client = identify(handle, headers)
  for _, name in ipairs(CREDENTIAL_HEADERS) do
    headers:remove(name)
  end
  if client == nil then
    return refuse(handle, "401", config.unauthenticated)
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(config.metadata_namespace, "client", client)
  local path = headers:get(":path") or ""
  if headers:get(":method") == "GET" and string.match(path, "^[^?]*") == "/v1/models" then
    local api = headers:get("anthropic-version") and "anthropic" or "openai"
    return handle:respond({[":status"] = "200", ["content-type"] = "application/json"},
                          config.listings[client][api])
  end
  local selected = metadata:get(config.metadata_namespace)
  local model = selected and selected.model
  -- A model the gateway does not serve is the router's to answer (404), to anyone known.
  if model ~= nil and config.served[model] and not config.grants[client][model] then
    return refuse(handle, "403", config.forbidden)
  end
  -- What original_path.lua does on a gateway that checks no client: one Lua call a request
  -- instead of two (each costs a coroutine).
  metadata:set(config.metadata_namespace, "path", headers:get(":path"))
  local limits = config.limits[client]
  if limits ~= nil then
    for kind, per_minute in pairs(limits) do
      metadata:set(config.limits_namespace, kind .. "_client", client)
      metadata:set(config.limits_namespace, kind, {requests_per_unit = per_minute, unit = "MINUTE"})
    end
  end
end
