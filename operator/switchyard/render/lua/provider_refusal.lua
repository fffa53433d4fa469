-- A provider's 401 or 403 means it refused the gateway's key, not the client's request: the
-- client gets a gateway error instead, and never the provider's body (it may quote the key,
-- or name the organisation it belongs to). The backend shaper marks such an answer with a
-- header, which the retry policy has already seen pass: every backend was tried by now.
--
-- `config` is a table the renderer (render/envoy.py) puts in front of this file, on its
-- first line so that line numbers in Lua's errors still match this file:
--   config.metadata_namespace   dynamic metadata namespace: the client's `path`
--   config.marker               the header the backend shaper sets on a refusal
--   config.openai_body          the error in OpenAI's format
--   config.anthropic_body       the error in Anthropic's format (for /v1/messages)

function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get(config.marker) == nil then
    return
  end
  headers:remove(config.marker)
  headers:replace(":status", "502")
  headers:replace("content-type", "application/json")
  local client = handle:streamInfo():dynamicMetadata():get(config.metadata_namespace) or {}
  local path = client["path"] or ""
  local body = config.openai_body
  if string.find(path, "/v1/messages", 1, true) == 1 then
    body = config.anthropic_body
  end
  handle:body(true):setBytes(body)
end
