-- Between the two chat APIs: OpenAI's Chat Completions ("openai") and Anthropic's Messages
-- ("anthropic"); and to Bedrock's Converse ("converse") from either, through Anthropic's
-- (converse.lua). Defines the global `translate`, used by the backend shaper on each attempt
-- whose backend speaks another API than the client:
--   translate.request(from, to, body, default_max_tokens)  -> body, context
--   translate.response(from, to, body, answer)              -> body (`answer`: the model and
--                                                              id a Converse answer lacks)
--   translate.error(from, to, status, text)                 -> text
--   translate.stream(from, to, context)                     -> function(chunk) -> text
-- `from` is the API the body is written in, `to` the one wanted; bodies are decoded JSON
-- (json.lua). A request field with no counterpart on the other side is either dropped or
-- refused: a refusal raises {refused = message}, which the shaper answers with a 400.
-- What is dropped and what is refused is listed in the README's translation table.

translate = {}

local array, null = json.array, json.null
local encode, decode = json.encode, json.decode
local format, concat = string.format, table.concat

local function refuse(message)
  error({refused = message}, 0)
end

local function present(value)
  return value ~= nil and value ~= null
end

local function number(value)
  return type(value) == "number" and value or 0
end

local function is_string(value)
  return type(value) == "string"
end

-- ---------------------------------------------------------------- requests: openai -> anthropic

-- An OpenAI image part's URL as an Anthropic image source.
local function image_source(url)
  local media_type, data = string.match(url, "^data:([^;,]+);base64,(.*)$")
  if media_type ~= nil then
    return {type = "base64", media_type = media_type, data = data}
  end
  return {type = "url", url = url}
end

-- OpenAI message content (a string or parts) as Anthropic content blocks; empty texts go
-- (Anthropic refuses empty text blocks).
local function blocks_of_parts(content, where)
  local blocks = array()
  if is_string(content) then
    if content ~= "" then blocks[1] = {type = "text", text = content} end
    return blocks
  end
  if not present(content) then return blocks end
  for index, part in ipairs(content) do
    if part.type == "text" then
      if part.text ~= "" then blocks[#blocks + 1] = {type = "text", text = part.text} end
    elseif part.type == "image_url" then
      local image = part.image_url
      local url = type(image) == "table" and image.url or image
      if not is_string(url) then refuse(format("%s.content[%d].image_url.url is required", where, index - 1)) end
      blocks[#blocks + 1] = {type = "image", source = image_source(url)}
    else
      refuse(format("%s.content[%d]: a '%s' part has no counterpart in Anthropic's Messages API",
                    where, index - 1, tostring(part.type)))
    end
  end
  return blocks
end

local function text_of_parts(content)
  if is_string(content) then return content end
  local texts = {}
  if present(content) then
    for _, part in ipairs(content) do
      if part.type == "text" then texts[#texts + 1] = part.text end
    end
  end
  return concat(texts, "\n")
end

local function arguments_object(text, where)
  if not is_string(text) or text == "" then return {} end
  local ok, value = pcall(decode, text)
  if not ok or type(value) ~= "table" or json.is_array(value) then
    refuse(where .. " must be a JSON object")
  end
  return value
end

local TOOL_CHOICE_TO_ANTHROPIC = {auto = "auto", none = "none", required = "any"}

local function anthropic_request(body, default_max_tokens)
  local out = {}
  local system = array()
  local messages = array()
  -- Anthropic wants user and assistant turns to alternate: consecutive messages of one role
  -- (tool results after a user turn, say) become one turn.
  local function add(role, blocks)
    if #blocks == 0 then return end
    local last = messages[#messages]
    if last ~= nil and last.role == role then
      for _, block in ipairs(blocks) do last.content[#last.content + 1] = block end
    else
      messages[#messages + 1] = {role = role, content = blocks}
    end
  end
  if type(body.messages) ~= "table" then refuse("messages is required") end
  for index, message in ipairs(body.messages) do
    local where = format("messages[%d]", index - 1)
    local role = message.role
    if role == "system" or role == "developer" then
      local text = text_of_parts(message.content)
      if text ~= "" then system[#system + 1] = {type = "text", text = text} end
    elseif role == "user" then
      add("user", blocks_of_parts(message.content, where))
    elseif role == "assistant" then
      local blocks = blocks_of_parts(message.content, where)
      if type(message.tool_calls) == "table" then
        for call_index, call in ipairs(message.tool_calls) do
          local call_where = format("%s.tool_calls[%d]", where, call_index - 1)
          local fn = call["function"] or {}
          blocks[#blocks + 1] = {
            type = "tool_use", id = call.id, name = fn.name,
            input = arguments_object(fn.arguments, call_where .. ".function.arguments"),
          }
        end
      end
      add("assistant", blocks)
    elseif role == "tool" then
      local result = {type = "tool_result", tool_use_id = message.tool_call_id}
      local content = blocks_of_parts(message.content, where)
      if #content > 0 then result.content = content end
      add("user", array({result}))
    else
      refuse(format("%s.role '%s' has no counterpart in Anthropic's Messages API", where, tostring(role)))
    end
  end
  out.messages = messages
  if #system > 0 then out.system = system end

  out.max_tokens = body.max_completion_tokens
  if not present(out.max_tokens) then out.max_tokens = body.max_tokens end
  if not present(out.max_tokens) then out.max_tokens = default_max_tokens end
  if present(body.temperature) then out.temperature = body.temperature end
  if present(body.top_p) then out.top_p = body.top_p end
  if is_string(body.stop) then
    out.stop_sequences = array({body.stop})
  elseif type(body.stop) == "table" and #body.stop > 0 then
    out.stop_sequences = body.stop
  end
  if body.stream == true then out.stream = true end
  if is_string(body.user) then out.metadata = {user_id = body.user} end

  if present(body.n) and body.n ~= 1 then
    refuse("n: Anthropic's Messages API returns one choice; n must be 1")
  end
  if body.logprobs == true or present(body.top_logprobs) then
    refuse("logprobs: Anthropic's Messages API has no log probabilities")
  end
  if present(body.audio) or present(body.modalities) and encode(body.modalities) ~= '["text"]' then
    refuse("modalities: Anthropic's Messages API answers in text only")
  end

  if type(body.tools) == "table" and #body.tools > 0 then
    local tools = array()
    for index, tool in ipairs(body.tools) do
      local fn = tool["function"]
      if tool.type ~= "function" or type(fn) ~= "table" then
        refuse(format("tools[%d]: only function tools have a counterpart in Anthropic's Messages API", index - 1))
      end
      local schema = fn.parameters
      if type(schema) ~= "table" then schema = {type = "object", properties = {}} end
      tools[#tools + 1] = {name = fn.name, description = fn.description, input_schema = schema}
    end
    out.tools = tools
    local choice = body.tool_choice
    if is_string(choice) then
      out.tool_choice = {type = TOOL_CHOICE_TO_ANTHROPIC[choice] or "auto"}
    elseif type(choice) == "table" and type(choice["function"]) == "table" then
      out.tool_choice = {type = "tool", name = choice["function"].name}
    end
    if body.parallel_tool_calls == false then
      out.tool_choice = out.tool_choice or {type = "auto"}
      if out.tool_choice.type ~= "none" then out.tool_choice.disable_parallel_tool_use = true end
    end
  end

  local response_format = body.response_format
  if type(response_format) == "table" then
    if response_format.type == "json_schema" then
      local schema = type(response_format.json_schema) == "table" and response_format.json_schema.schema
      if type(schema) ~= "table" then refuse("response_format.json_schema.schema is required") end
      out.output_config = {format = {type = "json_schema", schema = schema}}
    elseif response_format.type == "json_object" then
      refuse("response_format: Anthropic's Messages API has no JSON mode without a schema; use json_schema")
    end
  end
  local context = {
    stream = body.stream == true,
    usage = type(body.stream_options) == "table" and body.stream_options.include_usage == true,
  }
  return out, context
end

-- ---------------------------------------------------------------- requests: anthropic -> openai

local TOOL_CHOICE_TO_OPENAI = {auto = "auto", none = "none", any = "required"}

-- An assistant's Anthropic content blocks as OpenAI's message content (text, or null) and
-- tool calls. Thinking blocks are the model's own: another model cannot continue them.
local function assistant_message(blocks)
  local texts, calls = {}, array()
  for _, block in ipairs(blocks or {}) do
    if block.type == "text" then
      texts[#texts + 1] = block.text
    elseif block.type == "tool_use" then
      calls[#calls + 1] = {
        id = block.id, type = "function",
        ["function"] = {name = block.name, arguments = encode(block.input or {})},
      }
    end
  end
  local message = {role = "assistant", content = #texts > 0 and concat(texts) or null}
  if #calls > 0 then message.tool_calls = calls end
  return message
end

local function image_url(source, where)
  if type(source) ~= "table" then refuse(where .. ".source is required") end
  if source.type == "base64" then
    return {url = format("data:%s;base64,%s", tostring(source.media_type), tostring(source.data))}
  elseif source.type == "url" then
    return {url = source.url}
  end
  refuse(format("%s.source: a '%s' image source has no counterpart in OpenAI's Chat Completions API",
                where, tostring(source.type)))
end

local function tool_result_text(content, where)
  if is_string(content) then return content end
  local texts = {}
  if present(content) then
    for index, block in ipairs(content) do
      if block.type ~= "text" then
        refuse(format("%s.content[%d]: only text tool results have a counterpart in OpenAI's Chat Completions API",
                      where, index - 1))
      end
      texts[#texts + 1] = block.text
    end
  end
  return concat(texts, "\n")
end

local function openai_request(body)
  local out = {}
  local messages = array()
  if present(body.system) then
    local text = is_string(body.system) and body.system or text_of_parts(body.system)
    if text ~= "" then messages[1] = {role = "system", content = text} end
  end
  if type(body.messages) ~= "table" then refuse("messages: Field required") end
  for index, message in ipairs(body.messages) do
    local where = format("messages.%d", index - 1)
    local content = message.content
    if is_string(content) then
      messages[#messages + 1] = {role = message.role, content = content}
    elseif message.role == "assistant" then
      messages[#messages + 1] = assistant_message(content)
    else
      -- Tool results become `tool` messages, before the rest of the turn, as OpenAI
      -- wants them right after the assistant's calls.
      local parts = array()
      for block_index, block in ipairs(content or {}) do
        local block_where = format("%s.content.%d", where, block_index - 1)
        if block.type == "tool_result" then
          messages[#messages + 1] = {
            role = "tool", tool_call_id = block.tool_use_id,
            content = tool_result_text(block.content, block_where),
          }
        elseif block.type == "text" then
          parts[#parts + 1] = {type = "text", text = block.text}
        elseif block.type == "image" then
          parts[#parts + 1] = {type = "image_url", image_url = image_url(block.source, block_where)}
        else
          refuse(format("%s: a '%s' block has no counterpart in OpenAI's Chat Completions API",
                        block_where, tostring(block.type)))
        end
      end
      if #parts > 0 then messages[#messages + 1] = {role = message.role, content = parts} end
    end
  end
  out.messages = messages

  if present(body.max_tokens) then out.max_completion_tokens = body.max_tokens end
  if present(body.temperature) then out.temperature = body.temperature end
  if present(body.top_p) then out.top_p = body.top_p end
  if type(body.stop_sequences) == "table" and #body.stop_sequences > 0 then out.stop = body.stop_sequences end
  if body.stream == true then
    out.stream = true
    out.stream_options = {include_usage = true} -- the usage Anthropic's message_delta carries
  end
  if type(body.metadata) == "table" and is_string(body.metadata.user_id) then
    out.user = body.metadata.user_id
  end
  if present(body.container) or present(body.mcp_servers) then
    refuse("container and mcp_servers have no counterpart in OpenAI's Chat Completions API")
  end

  if type(body.tools) == "table" and #body.tools > 0 then
    local tools = array()
    for index, tool in ipairs(body.tools) do
      if type(tool.input_schema) ~= "table" then
        refuse(format("tools.%d: the server tool '%s' has no counterpart in OpenAI's Chat Completions API",
                      index - 1, tostring(tool.type or tool.name)))
      end
      tools[#tools + 1] = {
        type = "function",
        ["function"] = {name = tool.name, description = tool.description, parameters = tool.input_schema},
      }
    end
    out.tools = tools
    local choice = body.tool_choice
    if type(choice) == "table" then
      if choice.type == "tool" then
        out.tool_choice = {type = "function", ["function"] = {name = choice.name}}
      else
        out.tool_choice = TOOL_CHOICE_TO_OPENAI[choice.type]
      end
      if choice.disable_parallel_tool_use == true then out.parallel_tool_calls = false end
    end
  end

  local output = body.output_config
  if type(output) == "table" and type(output.format) == "table" then
    if output.format.type ~= "json_schema" or type(output.format.schema) ~= "table" then
      refuse("output_config.format: only a json_schema format has a counterpart in OpenAI's Chat Completions API")
    end
    out.response_format = {
      type = "json_schema", json_schema = {name = "output", schema = output.format.schema},
    }
  end
  return out, {stream = body.stream == true, usage = true}
end

function translate.request(from, to, body, default_max_tokens)
  if to == "converse" then
    -- Converse needs no max_tokens, and a model's own limit may be lower than the default.
    local messages, context = body, {stream = body.stream == true}
    if from == "openai" then messages, context = anthropic_request(body, nil) end
    return converse.request(messages), context
  end
  if from == "openai" and to == "anthropic" then return anthropic_request(body, default_max_tokens) end
  if from == "anthropic" and to == "openai" then return openai_request(body) end
  error("no translation from " .. tostring(from) .. " to " .. tostring(to), 0)
end

-- ---------------------------------------------------------------- responses

local FINISH_REASON = {
  end_turn = "stop", stop_sequence = "stop", pause_turn = "stop", max_tokens = "length",
  model_context_window_exceeded = "length", tool_use = "tool_calls", refusal = "content_filter",
}
local STOP_REASON = {
  stop = "end_turn", length = "max_tokens", tool_calls = "tool_use", function_call = "tool_use",
  content_filter = "refusal",
}

-- Anthropic counts cached input apart from `input_tokens`; OpenAI counts it within
-- `prompt_tokens` and says how much of it was cached.
local function openai_usage(usage)
  local cached = number(usage.cache_read_input_tokens)
  local prompt = number(usage.input_tokens) + cached + number(usage.cache_creation_input_tokens)
  local completion = number(usage.output_tokens)
  return {
    prompt_tokens = prompt, completion_tokens = completion, total_tokens = prompt + completion,
    prompt_tokens_details = {cached_tokens = cached},
  }
end

local function anthropic_usage(usage)
  local details = type(usage.prompt_tokens_details) == "table" and usage.prompt_tokens_details or {}
  local cached = number(details.cached_tokens)
  return {
    input_tokens = number(usage.prompt_tokens) - cached, output_tokens = number(usage.completion_tokens),
    cache_read_input_tokens = cached, cache_creation_input_tokens = 0,
  }
end

local function openai_response(body)
  local message = assistant_message(body.content)
  message.refusal = null
  return {
    id = body.id, object = "chat.completion", created = os.time(), model = body.model,
    choices = array({{index = 0, message = message, logprobs = null,
                      finish_reason = FINISH_REASON[body.stop_reason] or "stop"}}),
    usage = openai_usage(type(body.usage) == "table" and body.usage or {}),
  }
end

local function anthropic_response(body)
  local choice = type(body.choices) == "table" and body.choices[1] or {}
  local message = choice.message or {}
  local content = array()
  if is_string(message.content) and message.content ~= "" then
    content[1] = {type = "text", text = message.content}
  end
  for index, call in ipairs(type(message.tool_calls) == "table" and message.tool_calls or {}) do
    local fn = call["function"] or {}
    local ok, input = pcall(arguments_object, fn.arguments, "")
    content[#content + 1] = {type = "tool_use", id = call.id, name = fn.name, input = ok and input or {}}
  end
  return {
    id = body.id, type = "message", role = "assistant", model = body.model, content = content,
    stop_reason = STOP_REASON[choice.finish_reason] or "end_turn", stop_sequence = null,
    usage = anthropic_usage(type(body.usage) == "table" and body.usage or {}),
  }
end

function translate.response(from, to, body, answer)
  if from == "converse" then
    local message = converse.response(body, answer or {})
    if to == "anthropic" then return message end
    return openai_response(message)
  end
  if from == "anthropic" and to == "openai" then return openai_response(body) end
  if from == "openai" and to == "anthropic" then return anthropic_response(body) end
  error("no translation from " .. tostring(from) .. " to " .. tostring(to), 0)
end

-- ---------------------------------------------------------------- errors

local ANTHROPIC_ERROR = {
  [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [413] = "request_too_large", [429] = "rate_limit_error",
  [503] = "overloaded_error", [529] = "overloaded_error",
}

local function error_message(text)
  local ok, body = pcall(decode, text)
  -- Google's APIs answer some errors as a list of one.
  if ok and json.is_array(body) then body = body[1] end
  if ok and type(body) == "table" then
    local inner = type(body.error) == "table" and body.error or body
    -- Google's errors name their kind in `status` (INVALID_ARGUMENT, RESOURCE_EXHAUSTED).
    if is_string(inner.message) then
      return inner.message, inner.type or inner.status or inner.code
    end
  end
  return text ~= "" and text or "the provider answered with an error", nil
end

function translate.error(from, to, status, text)
  local message, kind = error_message(text)
  if to == "anthropic" then
    local anthropic_kind = ANTHROPIC_ERROR[status] or (status >= 500 and "api_error" or "invalid_request_error")
    return encode({type = "error", error = {type = anthropic_kind, message = message}})
  end
  local openai_kind = status >= 500 and "server_error" or "invalid_request_error"
  if status == 429 then openai_kind = "rate_limit_exceeded" end
  return encode({error = {message = message, type = openai_kind, param = null, code = kind or null}})
end

-- ---------------------------------------------------------------- streams

-- Server-sent events, whole, from chunks cut anywhere: calls on_event(name, data) for each.
local function event_reader(on_event)
  local pending = ""
  return function(chunk)
    pending = pending .. string.gsub(chunk, "\r", "")
    local out = {}
    while true do
      local stop = string.find(pending, "\n\n", 1, true)
      if stop == nil then break end
      local event = string.sub(pending, 1, stop - 1)
      pending = string.sub(pending, stop + 2)
      local name, data = nil, {}
      for line in string.gmatch(event, "[^\n]+") do
        local field, value = string.match(line, "^(%a+): ?(.*)$")
        if field == "event" then name = value elseif field == "data" then data[#data + 1] = value end
      end
      if #data > 0 then on_event(name, concat(data, "\n"), out) end
    end
    return concat(out)
  end
end

local function anthropic_to_openai_stream(context)
  local id, model, created = "", "", os.time()
  local usage, tools, next_tool = {}, {}, 0
  local function chunk(out, delta, finish)
    out[#out + 1] = "data: " .. encode({
      id = id, object = "chat.completion.chunk", created = created, model = model,
      choices = array({{index = 0, delta = delta, logprobs = null, finish_reason = finish or null}}),
    }) .. "\n\n"
  end
  local function merge_usage(more)
    if type(more) ~= "table" then return end
    for name, value in pairs(more) do
      if type(value) == "number" then usage[name] = value end
    end
  end
  return event_reader(function(_, data, out)
    local event = decode(data)
    local kind = event.type
    if kind == "message_start" then
      local message = event.message or {}
      id, model = message.id or id, message.model or model
      merge_usage(message.usage)
      chunk(out, {role = "assistant", content = ""})
    elseif kind == "content_block_start" then
      local block = event.content_block or {}
      if block.type == "tool_use" then
        tools[event.index] = next_tool
        chunk(out, {tool_calls = array({{index = next_tool, id = block.id, type = "function",
                                         ["function"] = {name = block.name, arguments = ""}}})})
        next_tool = next_tool + 1
      elseif block.type == "text" and is_string(block.text) and block.text ~= "" then
        chunk(out, {content = block.text})
      end
    elseif kind == "content_block_delta" then
      local delta = event.delta or {}
      if delta.type == "text_delta" then
        chunk(out, {content = delta.text})
      elseif delta.type == "input_json_delta" and tools[event.index] ~= nil then
        chunk(out, {tool_calls = array({{index = tools[event.index],
                                         ["function"] = {arguments = delta.partial_json}}})})
      end
    elseif kind == "message_delta" then
      merge_usage(event.usage)
      chunk(out, {}, FINISH_REASON[(event.delta or {}).stop_reason] or "stop")
    elseif kind == "message_stop" then
      if context.usage then
        out[#out + 1] = "data: " .. encode({
          id = id, object = "chat.completion.chunk", created = created, model = model,
          choices = array(), usage = openai_usage(usage),
        }) .. "\n\n"
      end
      out[#out + 1] = "data: [DONE]\n\n"
    elseif kind == "error" then
      local problem = event.error or {}
      out[#out + 1] = "data: " .. encode({error = {message = problem.message, type = problem.type,
                                                   param = null, code = null}}) .. "\n\n"
    end
  end)
end

local function openai_to_anthropic_stream()
  local started, finished = false, false
  local open, open_kind, next_block = nil, nil, 0 -- the open block, its type, the next block
  local tools = {} -- OpenAI's tool call index -> block index
  local stop_reason, usage = "end_turn", {}
  local function emit(out, name, data)
    data.type = name
    out[#out + 1] = "event: " .. name .. "\ndata: " .. encode(data) .. "\n\n"
  end
  local function close(out)
    if open ~= nil then
      emit(out, "content_block_stop", {index = open})
      open, open_kind = nil, nil
    end
  end
  local function start(out, block)
    close(out)
    open, open_kind, next_block = next_block, block.type, next_block + 1
    emit(out, "content_block_start", {index = open, content_block = block})
    return open
  end
  local function start_message(out, chunk)
    started = true
    emit(out, "message_start", {message = {
      id = chunk.id, type = "message", role = "assistant", model = chunk.model, content = array(),
      stop_reason = null, stop_sequence = null, usage = {input_tokens = 0, output_tokens = 0},
    }})
    emit(out, "ping", {})
  end
  local function finish(out)
    if finished then return end
    finished = true
    close(out)
    emit(out, "message_delta", {delta = {stop_reason = stop_reason, stop_sequence = null},
                                usage = anthropic_usage(usage)})
    emit(out, "message_stop", {})
  end
  return event_reader(function(_, data, out)
    if data == "[DONE]" then return finish(out) end
    local chunk = decode(data)
    if type(chunk.error) == "table" then
      emit(out, "error", {error = {type = "api_error",
                                   message = chunk.error.message}})
      return
    end
    if not started then start_message(out, chunk) end
    if type(chunk.usage) == "table" then usage = chunk.usage end
    for _, choice in ipairs(type(chunk.choices) == "table" and chunk.choices or {}) do
      local delta = choice.delta or {}
      if is_string(delta.content) and delta.content ~= "" then
        if open_kind ~= "text" then start(out, {type = "text", text = ""}) end
        emit(out, "content_block_delta", {index = open, delta = {type = "text_delta", text = delta.content}})
      end
      for _, call in ipairs(type(delta.tool_calls) == "table" and delta.tool_calls or {}) do
        local fn = call["function"] or {}
        if tools[call.index] == nil then
          tools[call.index] = start(out, {type = "tool_use", id = call.id, name = fn.name, input = {}})
        end
        if is_string(fn.arguments) and fn.arguments ~= "" then
          emit(out, "content_block_delta", {index = tools[call.index],
                                            delta = {type = "input_json_delta", partial_json = fn.arguments}})
        end
      end
      if present(choice.finish_reason) then
        stop_reason = STOP_REASON[choice.finish_reason] or "end_turn"
      end
    end
  end)
end

function translate.stream(from, to, context)
  if from == "anthropic" and to == "openai" then return anthropic_to_openai_stream(context) end
  if from == "openai" and to == "anthropic" then return openai_to_anthropic_stream() end
  error("no translation from " .. tostring(from) .. " to " .. tostring(to), 0)
end
