-- AWS event streams (application/vnd.amazon.eventstream) in plain Lua, for Bedrock's streamed
-- answers: as Anthropic server-sent events, those InvokeModelWithResponseStream carries in
-- them or (through converse.lua) those ConverseStream's events translate to.
-- Defines the globals:
--   event_stream_decoder()   a new decoder: a function feed(bytes) -> list of messages, each
--                            {headers = {name -> string value}, payload = string}. Takes the
--                            body in chunks as they come (a frame may be split anywhere, a
--                            chunk may hold several) and returns the messages completed by
--                            this chunk, in order. Checks both CRC32s and the lengths, and
--                            raises on a bad frame; the stream cannot be resynchronised, so
--                            every later feed raises the same error. Header values that are
--                            not strings: booleans "true"/"false", integers and timestamps in
--                            decimal, byte arrays as their bytes, UUIDs as 8-4-4-4-12 hex.
--   base64_decode(text)      the bytes of standard base64 with its padding; raises on a
--                            length that is not a multiple of 4 or a byte outside the alphabet.
--   bedrock_stream_to_sse(messages, on_event)
--                            Anthropic-format SSE text for decoded messages: each event
--                            through on_event(its :event-type, its payload) -> SSE text; an
--                            exception message (or an error message) an Anthropic `error`
--                            event, of type overloaded_error for throttling and
--                            unavailability, api_error otherwise.
--   invoke_chunk_to_sse(name, payload)
--                            on_event for InvokeModelWithResponseStream: a `chunk` event
--                            ({"bytes": base64 of a stream event's JSON}) becomes
--                            `event: <its type>\ndata: <the JSON>\n\n`, other events "".
--                            Raises on a chunk that is not such JSON.
-- Both use json.lua's global `json` when called.
-- Needs LuaJIT's `bit`.

do
  local band, bor, bxor, bnot, lshift, rshift, tobit = bit.band, bit.bor, bit.bxor, bit.bnot,
    bit.lshift, bit.rshift, bit.tobit
  local byte, char, sub, find, gsub, format = string.byte, string.char, string.sub, string.find,
    string.gsub, string.format
  local concat, unpack = table.concat, unpack

  -- CRC-32 (IEEE 802.3, reflected, as zlib's crc32), a table of each byte's remainder.
  local CRC = {}
  for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
      if band(c, 1) ~= 0 then c = bxor(rshift(c, 1), 0xEDB88320) else c = rshift(c, 1) end
    end
    CRC[i] = c
  end

  -- The CRC-32 of bytes first..last of `s`, as a signed 32-bit number (tobit's form).
  local function crc32(s, first, last)
    local c = -1
    for i = first, last do
      c = bxor(CRC[band(bxor(c, byte(s, i)), 255)], rshift(c, 8))
    end
    return bnot(c)
  end

  -- The unsigned big-endian 32-bit number at `at`.
  local function u32(s, at)
    local b1, b2, b3, b4 = byte(s, at, at + 3)
    return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  end

  local function signed(value, bits)
    if value >= 2 ^ (bits - 1) then return value - 2 ^ bits end
    return value
  end

  -- AWS's limits: a message of at most 16 MiB, its headers at most 128 KiB.
  local MAX_TOTAL, MAX_HEADERS = 16 * 1024 * 1024, 128 * 1024

  local function fail(problem)
    error("event stream: " .. problem, 0)
  end

  -- A frame's headers, bytes first..last of `s`.
  local function read_headers(s, first, last)
    local headers, p = {}, first
    while p <= last do
      local size = byte(s, p)
      local name = sub(s, p + 1, p + size)
      p = p + 1 + size
      local kind = byte(s, p)
      if size == 0 or kind == nil or p > last then fail("a header is cut short") end
      p = p + 1
      local value
      if kind == 7 or kind == 6 then -- string, byte array: a 16-bit length, then the bytes
        local high, low = byte(s, p, p + 1)
        local length = (high or 0) * 256 + (low or 0)
        value = sub(s, p + 2, p + 1 + length)
        p = p + 2 + length
      elseif kind == 0 or kind == 1 then
        value = kind == 0 and "true" or "false"
      elseif kind == 2 then
        value = tostring(signed(byte(s, p) or 0, 8))
        p = p + 1
      elseif kind == 3 then
        local high, low = byte(s, p, p + 1)
        value = tostring(signed((high or 0) * 256 + (low or 0), 16))
        p = p + 2
      elseif kind == 4 then
        value = tostring(signed(u32(s, p), 32))
        p = p + 4
      elseif kind == 5 or kind == 8 then -- 64-bit integer, timestamp (ms): exact to 2^53
        value = format("%.0f", signed(u32(s, p), 32) * 2 ^ 32 + u32(s, p + 4))
        p = p + 8
      elseif kind == 9 then
        local hex = gsub(sub(s, p, p + 15), ".", function(c) return format("%02x", byte(c)) end)
        value = sub(hex, 1, 8) .. "-" .. sub(hex, 9, 12) .. "-" .. sub(hex, 13, 16) .. "-"
          .. sub(hex, 17, 20) .. "-" .. sub(hex, 21, 32)
        p = p + 16
      else
        fail("header " .. name .. " has unknown type " .. kind)
      end
      if p > last + 1 then fail("header " .. name .. " runs past the headers") end
      headers[name] = value
    end
    return headers
  end

  -- The total length of the frame whose prelude is at `at` (12 bytes there), checked.
  local function prelude(s, at)
    local total, headers_length = u32(s, at), u32(s, at + 4)
    if crc32(s, at, at + 7) ~= tobit(u32(s, at + 8)) then fail("prelude CRC mismatch") end
    if total < 16 or total > MAX_TOTAL then fail("bad message length " .. total) end
    if headers_length > MAX_HEADERS or headers_length > total - 16 then
      fail("bad headers length " .. headers_length)
    end
    return total, headers_length
  end

  -- The messages of the whole frames in `s`, where the unread rest starts, and how many
  -- bytes the next frame needs before it can be read.
  local function read_frames(s)
    local messages, at, length = {}, 1, #s
    while length - at + 1 >= 12 do
      local total, headers_length = prelude(s, at)
      if length - at + 1 < total then return messages, at, total end
      local last = at + total - 1
      if crc32(s, at, last - 4) ~= tobit(u32(s, last - 3)) then fail("message CRC mismatch") end
      local payload_first = at + 12 + headers_length
      messages[#messages + 1] = {
        headers = read_headers(s, at + 12, payload_first - 1),
        payload = sub(s, payload_first, last - 4),
      }
      at = last + 1
    end
    return messages, at, 12
  end

  function event_stream_decoder()
    -- The bytes not read yet, as the chunks they came in: joined only once a whole frame
    -- (or its prelude) is there, so a frame split into many chunks is copied once.
    local pieces, count, have, need = {}, 0, 0, 12
    local broken = nil
    return function(bytes)
      if broken ~= nil then error(broken, 0) end
      if bytes == nil or bytes == "" then return {} end
      count, have = count + 1, have + #bytes
      pieces[count] = bytes
      if have < need then return {} end
      local s = count == 1 and pieces[1] or concat(pieces, "", 1, count)
      local ok, messages, at, next_need = pcall(read_frames, s)
      if not ok then
        broken = messages
        error(broken, 0)
      end
      if at > #s then
        pieces, count, have = {}, 0, 0
      else
        pieces, count = {sub(s, at)}, 1
        have = #pieces[1]
      end
      need = next_need
      return messages
    end
  end

  local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local SEXTET = {}
  for i = 1, 64 do SEXTET[byte(ALPHABET, i)] = i - 1 end

  function base64_decode(text)
    local length = #text
    if length % 4 ~= 0 then error("base64: the length is not a multiple of 4", 0) end
    if length == 0 then return "" end
    local padding = 0
    if byte(text, length) == 61 then padding = byte(text, length - 1) == 61 and 2 or 1 end
    -- Bytes are gathered as numbers and made a string a few thousand at a time (unpack has
    -- a limit on how many values it returns).
    local out, n, parts = {}, 0, {}
    for i = 1, length, 4 do
      local a, b, c, d = byte(text, i, i + 3)
      a, b = SEXTET[a], SEXTET[b]
      if i + 3 == length and padding > 0 then
        c = padding == 2 and 0 or SEXTET[c]
        d = 0
      else
        c, d = SEXTET[c], SEXTET[d]
      end
      if a == nil or b == nil or c == nil or d == nil then
        error(format("base64: a byte outside the alphabet near byte %d", i), 0)
      end
      local v = bor(lshift(a, 18), lshift(b, 12), lshift(c, 6), d)
      out[n + 1], out[n + 2], out[n + 3] = rshift(v, 16), band(rshift(v, 8), 255), band(v, 255)
      n = n + 3
      if n >= 3000 then
        parts[#parts + 1] = char(unpack(out, 1, n))
        n = 0
      end
    end
    parts[#parts + 1] = char(unpack(out, 1, n - padding))
    return concat(parts)
  end

  -- Bedrock's exceptions that say "try again later", as Anthropic says it.
  local OVERLOADED = {
    throttlingException = true,
    serviceUnavailableException = true,
    ThrottlingException = true,
    ServiceUnavailableException = true,
  }

  local function error_event(kind, message)
    return 'event: error\ndata: {"type":"error","error":{"type":"' .. kind .. '","message":'
      .. json.encode(message) .. "}}\n\n"
  end

  local function exception_message(message)
    local ok, body = pcall(json.decode, message.payload)
    if ok and type(body) == "table" then
      local text = body.message or body.Message
      if type(text) == "string" then return text end
    end
    if message.payload ~= "" then return message.payload end
    return message.headers[":exception-type"] or "The model's stream failed."
  end

  function invoke_chunk_to_sse(name, payload)
    if name ~= "chunk" then return "" end
    local chunk = json.decode(payload)
    if type(chunk) ~= "table" or type(chunk.bytes) ~= "string" then
      error("event stream: a chunk without bytes", 0)
    end
    local data = base64_decode(chunk.bytes)
    local event = json.decode(data)
    local kind = type(event) == "table" and event.type or nil
    if type(kind) ~= "string" or not find(kind, "^[%w_]+$") then
      error("event stream: a chunk's event has no type", 0)
    end
    -- Raw line breaks in JSON are only ever white space (in strings they are escaped), and
    -- one would end the SSE data line.
    if find(data, "[\r\n]") then data = gsub(data, "[\r\n]", " ") end
    return "event: " .. kind .. "\ndata: " .. data .. "\n\n"
  end

  function bedrock_stream_to_sse(messages, on_event)
    local out = {}
    for i = 1, #messages do
      local message = messages[i]
      local headers = message.headers
      local kind = headers[":message-type"] or "event"
      if kind == "event" then
        out[#out + 1] = on_event(headers[":event-type"], message.payload)
      elseif kind == "exception" then
        local exception = headers[":exception-type"] or ""
        out[#out + 1] = error_event(OVERLOADED[exception] and "overloaded_error" or "api_error",
          exception_message(message))
      elseif kind == "error" then
        out[#out + 1] = error_event("api_error",
          headers[":error-message"] or headers[":error-code"] or "The model's stream failed.")
      end
    end
    return concat(out)
  end
end
