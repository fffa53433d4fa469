-- Keep the client's path in dynamic metadata before any attempt rewrites `:path`: retries
-- reuse the request whose headers an earlier attempt changed, and shape theirs from this.
--
-- `config` is a table the renderer (render/envoy.py) puts in front of this file, on its
-- first line so that line numbers in Lua's errors still match this file:
--   config.metadata_namespace   the dynamic metadata namespace of the gateway's filters

function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  handle:streamInfo():dynamicMetadata():set(config.metadata_namespace, "path", path)
end
