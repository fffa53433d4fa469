-- SHA-256 (FIPS 180-4) in plain Lua, as Envoy's Lua API has no digest function: the gateway
-- compares digests of client keys, so that the keys themselves never travel in its config.
-- Defines the one global `sha256_hex(message)`; needs LuaJIT's `bit` (Envoy's Lua is LuaJIT 2.1).
-- Also `sha256_digest(message)`, the same digest as 32 raw bytes (for HMAC, sigv4.lua): a local
-- of the chunk rather than a global, so files appended after this one in the same chunk see it
-- while the filters that only compare key digests get no global they do not use.

local sha256_digest

do
  local band, bor, bxor, ror = bit.band, bit.bor, bit.bxor, bit.ror
  local lshift, rshift, tobit, tohex = bit.lshift, bit.rshift, bit.tobit, bit.tohex
  local byte, char, rep, sub, floor = string.byte, string.char, string.rep, string.sub, math.floor
  local concat = table.concat

  -- Round constants and initial hash values. Bit operations return signed 32-bit numbers, so
  -- every word is kept in that form (tobit) and sums are brought back to it with tobit.
  local K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  }
  local H0 = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  }
  for i = 1, #K do K[i] = tobit(K[i]) end
  for i = 1, #H0 do H0[i] = tobit(H0[i]) end

  -- The message schedule, reused by every block: a filter's Lua state runs one call at a time.
  local W = {}

  -- Mixes the 64-byte block of `s` at `i` (1-based) into the state `H`.
  local function compress(H, s, i)
    for j = 1, 16 do
      local b1, b2, b3, b4 = byte(s, i, i + 3)
      W[j] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
      i = i + 4
    end
    for j = 17, 64 do
      local x, y = W[j - 15], W[j - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      W[j] = tobit(W[j - 16] + s0 + W[j - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
    for j = 1, 64 do
      local s1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(g, band(e, bxor(f, g)))
      local t1 = h + s1 + ch + K[j] + W[j]
      local s0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bor(band(a, b), band(c, bor(a, b)))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + s0 + maj)
    end
    H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
    H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
  end

  local function be32(x)
    return char(band(rshift(x, 24), 255), band(rshift(x, 16), 255), band(rshift(x, 8), 255),
      band(x, 255))
  end

  -- The eight words of the digest of `message`.
  local function digest_words(message)
    local H = { H0[1], H0[2], H0[3], H0[4], H0[5], H0[6], H0[7], H0[8] }
    local length = #message
    local whole = length - length % 64
    -- The whole blocks straight from the message, then the padded rest: 0x80, zeros, and
    -- the length in bits as 64 bits big-endian, to a multiple of 64 bytes.
    for i = 1, whole, 64 do compress(H, message, i) end
    local bits = length * 8
    local rest = sub(message, whole + 1) .. "\128" .. rep("\0", (55 - length % 64) % 64)
      .. be32(floor(bits / 2 ^ 32)) .. be32(bits % 2 ^ 32)
    for i = 1, #rest, 64 do compress(H, rest, i) end
    return H
  end

  function sha256_hex(message)
    local H = digest_words(message)
    for i = 1, 8 do H[i] = tohex(H[i]) end
    return concat(H)
  end

  sha256_digest = function(message)
    local H = digest_words(message)
    for i = 1, 8 do H[i] = be32(H[i]) end
    return concat(H)
  end
end
