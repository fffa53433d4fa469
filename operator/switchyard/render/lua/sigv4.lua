-- AWS Signature Version 4 in plain Lua, for backends on AWS (Bedrock): Envoy's Lua has no
-- crypto, so the HMAC is built on sha256.lua. Defines the globals:
--   hmac_sha256(key, message)   HMAC-SHA256 (RFC 2104) of two byte strings: 32 raw bytes
--   sigv4_sign(request, credentials, region, service, now)
--       request      {method, path (percent-encoded, as it goes on the wire), query (as on
--                    the wire, without `?`; may be "" or nil), headers (lower-case name ->
--                    value; `host` required), body (string; nil is empty)}
--       credentials  {access_key_id, secret_access_key, session_token (nil or "": none)}
--       now          seconds since the epoch (os.time())
--     returns the headers to set on the request, lower-case name -> value: x-amz-date,
--     x-amz-content-sha256 (the body's SHA-256 in hex), x-amz-security-token (only with a
--     session token) and authorization. Signed are host, x-amz-content-sha256, x-amz-date,
--     x-amz-security-token (with a session token) and content-type (when in request.headers);
--     any other header may change on the way. The caller sets these, and removes an
--     x-amz-security-token the request came with when there is none. The canonical URI is botocore's for services
--     other than S3: dot and empty segments removed, then the path percent-encoded again
--     (`%3A` is canonicalised as `%253A`). The query's pairs are sorted as they are, already
--     encoded. Raises when host is missing.
--   sigv4_credentials(text)
--       the [default] profile of an AWS shared-credentials file (full-line `#`/`;` comments,
--       blank lines, spaces around `=`, names in any case) -> {access_key_id,
--       secret_access_key, session_token (nil when absent)}; or nil and the reason when the
--       profile or one of its two keys is missing.
-- Must follow sha256.lua in the same chunk: it uses that file's local `sha256_digest`.

do
  local digest, hex = sha256_digest, sha256_hex
  if digest == nil then error("sigv4.lua must follow sha256.lua in the same chunk", 0) end
  local bxor, byte, char, sub, find, gsub, format = bit.bxor, string.byte, string.char,
    string.sub, string.find, string.gsub, string.format
  local concat, sort, floor, unpack = table.concat, table.sort, math.floor, unpack

  -- A key's inner and outer pads: the key (hashed first when longer than a block) XORed
  -- with 0x36 and 0x5c, to 64 bytes.
  local inner, outer = {}, {}
  local function pads(key)
    if #key > 64 then key = digest(key) end
    for i = 1, 64 do
      local b = byte(key, i) or 0
      inner[i], outer[i] = bxor(b, 0x36), bxor(b, 0x5c)
    end
    return char(unpack(inner)), char(unpack(outer))
  end

  function hmac_sha256(key, message)
    local ipad, opad = pads(key)
    return digest(opad .. digest(ipad .. message))
  end

  -- The pads of the signing key by "secret\0day\0region\0service": the four HMACs that
  -- derive it run once a day per key, and each signature then costs two hashes. Emptied
  -- when the day changes, and when rotated secrets have filled it.
  local signing_pads, cached, cached_day = {}, 0, nil
  local function signing_key(secret, day, region, service)
    if day ~= cached_day then signing_pads, cached, cached_day = {}, 0, day end
    local name = secret .. "\0" .. day .. "\0" .. region .. "\0" .. service
    local entry = signing_pads[name]
    if entry == nil then
      local key = hmac_sha256("AWS4" .. secret, day)
      key = hmac_sha256(key, region)
      key = hmac_sha256(key, service)
      key = hmac_sha256(key, "aws4_request")
      local ipad, opad = pads(key)
      entry = {ipad, opad}
      if cached >= 64 then signing_pads, cached = {}, 0 end
      signing_pads[name], cached = entry, cached + 1
    end
    return entry[1], entry[2]
  end

  -- Every byte but the unreserved ones and `/` as %XX, `%` included (Python's
  -- quote(path, safe="/~"), as botocore canonicalises).
  local ENCODED = {}
  for b = 0, 255 do ENCODED[char(b)] = format("%%%02X", b) end

  -- botocore's remove_dot_segments: `.` and empty segments go, `..` takes one back; the
  -- leading slash stays, and a trailing one when any segment is left.
  local function without_dot_segments(path)
    local kept = {}
    for segment in string.gmatch(path, "[^/]+") do
      if segment == ".." then
        if #kept > 0 then kept[#kept] = nil end
      elseif segment ~= "." then
        kept[#kept + 1] = segment
      end
    end
    local first = sub(path, 1, 1) == "/" and "/" or ""
    local last = (#kept > 0 and sub(path, -1) == "/") and "/" or ""
    return first .. concat(kept, "/") .. last
  end

  -- Canonical URIs by path: a gateway sends a few paths (one per model and operation)
  -- over and over, and the pattern functions below are not compiled by LuaJIT (~4 µs).
  local uris, uri_count = {}, 0
  local function canonical_uri(path)
    if path == nil or path == "" then return "/" end
    local known = uris[path]
    if known ~= nil then return known end
    local canonical = path
    -- Most paths have neither `//` nor a dot segment: no need to split them.
    if find(path, "//", 1, true) or find(path, "/%.%.?/") or find(path, "/%.%.?$") then
      canonical = without_dot_segments(path)
    end
    canonical = gsub(canonical, "[^A-Za-z0-9%-%._~/]", ENCODED)
    if uri_count >= 256 then uris, uri_count = {}, 0 end
    uris[path], uri_count = canonical, uri_count + 1
    return canonical
  end

  -- The query's `name=value` pairs sorted by name, then value (a pair without `=` has an
  -- empty value), as botocore sorts a URL's query.
  local function by_name_then_value(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end

  local function canonical_query(query)
    if query == nil or query == "" then return "" end
    local pairs_, position = {}, 1
    while true do
      local stop = find(query, "&", position, true)
      local pair = sub(query, position, (stop or #query + 1) - 1)
      local equals = find(pair, "=", 1, true)
      if equals then
        pairs_[#pairs_ + 1] = {sub(pair, 1, equals - 1), sub(pair, equals + 1)}
      else
        pairs_[#pairs_ + 1] = {pair, ""}
      end
      if stop == nil then break end
      position = stop + 1
    end
    sort(pairs_, by_name_then_value)
    for i = 1, #pairs_ do pairs_[i] = pairs_[i][1] .. "=" .. pairs_[i][2] end
    return concat(pairs_, "&")
  end

  -- A header value as SigV4 signs it: trimmed, runs of white space as one space.
  local function trimmed(value)
    if not find(value, "%s") then return value end
    return (gsub(gsub(gsub(value, "^%s+", ""), "%s+$", ""), "%s+", " "))
  end

  -- X-Amz-Date of the last second asked for: most requests of a second share it.
  local stamp_second, stamp = nil, nil

  function sigv4_sign(request, credentials, region, service, now)
    local headers = request.headers or {}
    local host = headers["host"]
    if host == nil or host == "" then error("sigv4_sign: the request has no host header", 0) end
    now = floor(now)
    if now ~= stamp_second then stamp_second, stamp = now, os.date("!%Y%m%dT%H%M%SZ", now) end
    local day = sub(stamp, 1, 8)
    local payload = hex(request.body or "")
    local token = credentials.session_token
    if token == "" then token = nil end

    -- The signed headers, in their sorted order.
    local content_type = headers["content-type"]
    local lines, names = {}, {}
    if content_type ~= nil then
      lines[1], names[1] = "content-type:" .. trimmed(content_type), "content-type"
    end
    lines[#lines + 1] = "host:" .. trimmed(host)
    lines[#lines + 1] = "x-amz-content-sha256:" .. payload
    lines[#lines + 1] = "x-amz-date:" .. stamp
    names[#names + 1] = "host;x-amz-content-sha256;x-amz-date"
    if token ~= nil then
      lines[#lines + 1] = "x-amz-security-token:" .. trimmed(token)
      names[#names + 1] = "x-amz-security-token"
    end
    local signed = concat(names, ";")

    local canonical = string.upper(request.method or "POST") .. "\n"
      .. canonical_uri(request.path) .. "\n" .. canonical_query(request.query) .. "\n"
      .. concat(lines, "\n") .. "\n\n" .. signed .. "\n" .. payload
    local scope = day .. "/" .. region .. "/" .. service .. "/aws4_request"
    local to_sign = "AWS4-HMAC-SHA256\n" .. stamp .. "\n" .. scope .. "\n" .. hex(canonical)
    local ipad, opad = signing_key(credentials.secret_access_key, day, region, service)
    local signature = hex(opad .. digest(ipad .. to_sign))
    return {
      ["x-amz-date"] = stamp,
      ["x-amz-content-sha256"] = payload,
      ["x-amz-security-token"] = token,
      authorization = "AWS4-HMAC-SHA256 Credential=" .. credentials.access_key_id .. "/"
        .. scope .. ", SignedHeaders=" .. signed .. ", Signature=" .. signature,
    }
  end

  local NAMES = {
    aws_access_key_id = "access_key_id",
    aws_secret_access_key = "secret_access_key",
    aws_session_token = "session_token",
  }

  function sigv4_credentials(text)
    local found, section = {}, nil
    local seen = false
    -- Lines end in \n or \r\n; a last line may have no end.
    for line in string.gmatch(text .. "\n", "([^\n]*)\n") do
      line = gsub(gsub(line, "^%s+", ""), "%s+$", "")
      local first = sub(line, 1, 1)
      if line == "" or first == "#" or first == ";" then
        -- blank, or a comment
      elseif first == "[" then
        section = string.match(line, "^%[%s*(.-)%s*%]$")
        if section == "default" then seen = true end
      elseif section == "default" then
        local name, value = string.match(line, "^([^=]-)%s*=%s*(.*)$")
        local field = name and NAMES[string.lower(name)]
        if field ~= nil then found[field] = value end
      end
    end
    if not seen then return nil, "the credentials file has no [default] profile" end
    for _, name in ipairs({"aws_access_key_id", "aws_secret_access_key"}) do
      local value = found[NAMES[name]]
      if value == nil or value == "" then
        return nil, "the [default] profile has no " .. name
      end
    end
    if found.session_token == "" then found.session_token = nil end
    return found
  end
end
