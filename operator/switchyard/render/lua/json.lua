-- JSON for the translator: Envoy's Lua has no JSON library. Defines the global `json`:
--   json.decode(text)   a value: objects are plain tables, arrays are tables marked by
--                       json.array, JSON null is json.null; an error names the byte
--   json.encode(value)  text: a table marked as an array, or with t[1], is an array;
--                       any other table an object; nil and json.null are null
-- Bodies run to megabytes (images in base64), so strings are cut out with plain finds
-- (memchr) rather than walked byte by byte.

json = {}
json.null = setmetatable({}, {__tostring = function() return "null" end})

local ARRAY = {}
local byte, sub, find, char, format = string.byte, string.sub, string.find, string.char, string.format
local concat, floor, huge = table.concat, math.floor, math.huge

function json.array(items)
  return setmetatable(items or {}, ARRAY)
end

function json.is_array(value)
  return type(value) == "table" and (getmetatable(value) == ARRAY or value[1] ~= nil)
end

local function fail(at, problem)
  error(format("JSON at byte %d: %s", at, problem), 0)
end

local SPACE = {[32] = true, [9] = true, [10] = true, [13] = true}

-- The first byte at or after `at` that is not white space. Compact JSON has none: that is
-- checked first, as a pattern search costs far more than a byte.
local function skip_space(text, at)
  if not SPACE[byte(text, at)] then return at end
  return find(text, "[^ \t\r\n]", at) or #text + 1
end

local ESCAPES = {
  [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n", [114] = "\r",
  [116] = "\t",
}

local function utf8(code)
  if code < 0x80 then return char(code) end
  if code < 0x800 then return char(0xC0 + floor(code / 0x40), 0x80 + code % 0x40) end
  if code < 0x10000 then
    return char(0xE0 + floor(code / 0x1000), 0x80 + floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
  end
  return char(0xF0 + floor(code / 0x40000), 0x80 + floor(code / 0x1000) % 0x40,
              0x80 + floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

-- The string that opens at `at` (a '"'), and the index just past it. Most strings have no
-- escapes: for them, two plain finds (which LuaJIT compiles; a pattern it does not).
local function decode_string(text, at)
  local quote = find(text, '"', at + 1, true)
  if quote == nil then fail(at, "unterminated string") end
  local raw = sub(text, at + 1, quote - 1)
  if not find(raw, "\\", 1, true) then return raw, quote + 1 end
  local parts, position = nil, at + 1
  while true do
    local stop = find(text, '["\\]', position)
    if stop == nil then fail(at, "unterminated string") end
    if byte(text, stop) == 34 then
      if parts == nil then return sub(text, at + 1, stop - 1), stop + 1 end
      parts[#parts + 1] = sub(text, position, stop - 1)
      return concat(parts), stop + 1
    end
    parts = parts or {}
    parts[#parts + 1] = sub(text, position, stop - 1)
    local kind = byte(text, stop + 1)
    if kind == 117 then -- \uXXXX, with a surrogate pair as one code point
      local code = tonumber(sub(text, stop + 2, stop + 5), 16)
      if code == nil then fail(stop, "bad \\u escape") end
      position = stop + 6
      if code >= 0xD800 and code < 0xDC00 and sub(text, position, position + 1) == "\\u" then
        local low = tonumber(sub(text, position + 2, position + 5), 16)
        if low ~= nil and low >= 0xDC00 and low < 0xE000 then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          position = position + 6
        end
      end
      parts[#parts + 1] = utf8(code)
    else
      local escaped = ESCAPES[kind]
      if escaped == nil then fail(stop, "bad escape") end
      parts[#parts + 1] = escaped
      position = stop + 2
    end
  end
end

local decode_value

local function decode_array(text, at)
  local items, position = json.array(), skip_space(text, at + 1)
  if byte(text, position) == 93 then return items, position + 1 end
  while true do
    local item
    item, position = decode_value(text, position)
    items[#items + 1] = item
    position = skip_space(text, position)
    local delimiter = byte(text, position)
    if delimiter == 93 then return items, position + 1 end
    if delimiter ~= 44 then fail(position, "',' or ']' expected") end
    position = skip_space(text, position + 1)
  end
end

local function decode_object(text, at)
  local members, position = {}, skip_space(text, at + 1)
  if byte(text, position) == 125 then return members, position + 1 end
  while true do
    if byte(text, position) ~= 34 then fail(position, "a member name was expected") end
    local name
    name, position = decode_string(text, position)
    position = skip_space(text, position)
    if byte(text, position) ~= 58 then fail(position, "':' expected") end
    members[name], position = decode_value(text, skip_space(text, position + 1))
    position = skip_space(text, position)
    local delimiter = byte(text, position)
    if delimiter == 125 then return members, position + 1 end
    if delimiter ~= 44 then fail(position, "',' or '}' expected") end
    position = skip_space(text, position + 1)
  end
end

local LITERALS = {["true"] = true, ["false"] = false}
-- The bytes of numbers and of true, false and null.
local WORD, WORD_BYTES = {}, "0123456789+-.eEtruefalsn"
for index = 1, #WORD_BYTES do WORD[byte(WORD_BYTES, index)] = true end

decode_value = function(text, at)
  local first = byte(text, at)
  if first == 34 then return decode_string(text, at) end
  if first == 123 then return decode_object(text, at) end
  if first == 91 then return decode_array(text, at) end
  local past = at
  while WORD[byte(text, past)] do past = past + 1 end
  if past == at then fail(at, "a value was expected") end
  local word = sub(text, at, past - 1)
  if word == "null" then return json.null, past end
  if LITERALS[word] ~= nil then return LITERALS[word], past end
  local number = tonumber(word)
  if number == nil then fail(at, "a value was expected") end
  return number, past
end

function json.decode(text)
  local position = 1
  if sub(text, 1, 3) == "\239\187\191" then position = 4 end -- a UTF-8 BOM
  local value, past = decode_value(text, skip_space(text, position))
  if skip_space(text, past) <= #text then fail(past, "trailing characters") end
  return value
end

local STRING_ESCAPES = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                        ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}

local function escape(c)
  return STRING_ESCAPES[c] or format("\\u%04x", byte(c))
end

-- Whether `text` needs escapes. Short strings are checked byte by byte, which LuaJIT
-- compiles (a pattern search it does not); long ones (base64 images) by the pattern.
local function needs_escapes(text)
  local length = #text
  if length > 64 then return find(text, '[%c"\\]') ~= nil end
  for index = 1, length do
    local code = byte(text, index)
    if code < 32 or code == 34 or code == 92 or code == 127 then return true end
  end
  return false
end

local function encode_string(text)
  if not needs_escapes(text) then return '"' .. text .. '"' end
  return '"' .. string.gsub(text, '[%c"\\]', escape) .. '"'
end

local encode_into

local function encode_number(number, out)
  if number ~= number or number == huge or number == -huge then
    error("JSON cannot carry " .. tostring(number), 0)
  end
  if number == floor(number) and number > -1e14 and number < 1e14 then
    out[#out + 1] = tostring(number) -- "%.14g": exact, and no exponent, below 1e14
  elseif number == floor(number) and number > -2^53 and number < 2^53 then
    out[#out + 1] = format("%d", number)
  else
    local short = format("%.14g", number)
    out[#out + 1] = tonumber(short) == number and short or format("%.17g", number)
  end
end

encode_into = function(value, out)
  local kind = type(value)
  if kind == "string" then
    out[#out + 1] = encode_string(value)
  elseif kind == "number" then
    encode_number(value, out)
  elseif kind == "boolean" then
    out[#out + 1] = value and "true" or "false"
  elseif value == nil or value == json.null then
    out[#out + 1] = "null"
  elseif kind == "table" then
    if json.is_array(value) then
      out[#out + 1] = "["
      for index = 1, #value do
        if index > 1 then out[#out + 1] = "," end
        encode_into(value[index], out)
      end
      out[#out + 1] = "]"
    else
      out[#out + 1] = "{"
      local first = true
      for name, item in pairs(value) do
        if not first then out[#out + 1] = "," end
        first = false
        out[#out + 1] = encode_string(tostring(name))
        out[#out + 1] = ":"
        encode_into(item, out)
      end
      out[#out + 1] = "}"
    end
  else
    error("JSON cannot carry a " .. kind, 0)
  end
end

function json.encode(value)
  local out = {}
  encode_into(value, out)
  return concat(out)
end
