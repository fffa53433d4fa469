-- Amazon Bedrock's Converse API, which serves every Bedrock model, from and to Anthropic's
-- Messages API. An OpenAI client's request reaches here translated to Anthropic's first, and
-- the answer goes on from Anthropic's to OpenAI's (translate.lua), so each side is written once.
-- Defines the global `converse`:
--   converse.request(body)            -> a Converse request body (no model: it is in the path)
--   converse.response(body, answer)   -> an Anthropic message; `answer` = {model = ..., id = ...}
--   converse.stream(answer)           -> a function(name, payload) -> Anthropic SSE text, for
--                                        each ConverseStream event (event_stream.lua decodes
--                                        the frames)
-- A field with no counterpart raises {refused = message}, as translate.lua's do: the shaper
-- answers it with a 400 that names the field. What is dropped and refused is in the README's
-- translation table.

converse = {}

do
  local array, null, encode = json.array, json.null, json.encode
  local format = string.format

  local function refuse(message)
    error({refused = message}, 0)
  end

  local function present(value)
    return value ~= nil and value ~= null
  end

  -- Anthropic's cache breakpoint on a block becomes a cachePoint after it.
  local CACHE_POINT = {cachePoint = {type = "default"}}
  local function add(blocks, block, cached)
    blocks[#blocks + 1] = block
    if type(cached) == "table" then blocks[#blocks + 1] = CACHE_POINT end
  end

  -- Converse takes an image's bytes and its format; Anthropic's media type says the format.
  local function image(source, where)
    if type(source) ~= "table" or source.type ~= "base64" then
      refuse(where .. ".source: Bedrock's Converse API takes images as base64 data, not URLs")
    end
    local kind = string.match(source.media_type or "", "^image/(%a+)$")
    return {image = {format = kind, source = {bytes = source.data}}}
  end

  local function text_blocks(content, where)
    local blocks = array()
    if type(content) == "string" then
      blocks[1] = {text = content}
      return blocks
    end
    for index, block in ipairs(type(content) == "table" and content or {}) do
      local at = format("%s[%d]", where, index - 1)
      if block.type == "text" then
        add(blocks, {text = block.text}, block.cache_control)
      elseif block.type == "image" then
        add(blocks, image(block.source, at), block.cache_control)
      else
        refuse(format("%s: a '%s' block has no counterpart in Bedrock's Converse API here",
                      at, tostring(block.type)))
      end
    end
    return blocks
  end

  local function content_blocks(content, where)
    if type(content) == "string" then return array({{text = content}}) end
    local blocks = array()
    for index, block in ipairs(type(content) == "table" and content or {}) do
      local at = format("%s.content[%d]", where, index - 1)
      local kind = block.type
      if kind == "text" then
        add(blocks, {text = block.text}, block.cache_control)
      elseif kind == "image" then
        add(blocks, image(block.source, at), block.cache_control)
      elseif kind == "tool_use" then
        add(blocks, {toolUse = {toolUseId = block.id, name = block.name, input = block.input or {}}},
            block.cache_control)
      elseif kind == "tool_result" then
        local result = {toolUseId = block.tool_use_id, content = text_blocks(block.content, at .. ".content")}
        if block.is_error == true then result.status = "error" end
        add(blocks, {toolResult = result}, block.cache_control)
      elseif kind == "thinking" or kind == "redacted_thinking" then
        -- The model's own reasoning: another model cannot continue it.
      else
        refuse(format("%s: a '%s' block has no counterpart in Bedrock's Converse API here",
                      at, tostring(kind)))
      end
    end
    return blocks
  end

  local TOOL_CHOICE = {auto = "auto", any = "any"}
  -- The Messages fields carried; `stream` is the call's path, `metadata` and
  -- `disable_parallel_tool_use` have no counterpart and go.
  local CARRIED = {
    model = true, messages = true, system = true, max_tokens = true, temperature = true,
    top_p = true, top_k = true, stop_sequences = true, stream = true, tools = true,
    tool_choice = true, metadata = true,
  }

  function converse.request(body)
    local names = {}
    for name in pairs(body) do
      if not CARRIED[name] then names[#names + 1] = name end
    end
    if #names > 0 then
      table.sort(names)
      refuse(names[1] .. " has no counterpart in Bedrock's Converse API")
    end
    if type(body.messages) ~= "table" then refuse("messages is required") end
    local out = {messages = array()}
    for index, message in ipairs(body.messages) do
      local where = format("messages[%d]", index - 1)
      local blocks = content_blocks(message.content, where)
      if #blocks > 0 then out.messages[#out.messages + 1] = {role = message.role, content = blocks} end
    end
    if present(body.system) then out.system = text_blocks(body.system, "system") end

    local inference = {}
    if present(body.max_tokens) then inference.maxTokens = body.max_tokens end
    if present(body.temperature) then inference.temperature = body.temperature end
    if present(body.top_p) then inference.topP = body.top_p end
    if present(body.stop_sequences) then inference.stopSequences = body.stop_sequences end
    if next(inference) ~= nil then out.inferenceConfig = inference end
    -- Bedrock's documented place for what Converse has no field of its own for.
    if present(body.top_k) then out.additionalModelRequestFields = {top_k = body.top_k} end

    if type(body.tools) == "table" and #body.tools > 0 then
      local tools = array()
      for index, tool in ipairs(body.tools) do
        if present(tool.type) and tool.type ~= "custom" then
          refuse(format("tools[%d]: a '%s' tool has no counterpart in Bedrock's Converse API",
                        index - 1, tostring(tool.type)))
        end
        local spec = {name = tool.name, inputSchema = {json = tool.input_schema}}
        if present(tool.description) then spec.description = tool.description end
        add(tools, {toolSpec = spec}, tool.cache_control)
      end
      out.toolConfig = {tools = tools}
      local choice = type(body.tool_choice) == "table" and body.tool_choice or {}
      if choice.type == "none" then
        refuse("tool_choice: Bedrock's Converse API cannot forbid the tools it is given; leave them out")
      elseif choice.type == "tool" then
        out.toolConfig.toolChoice = {tool = {name = choice.name}}
      elseif TOOL_CHOICE[choice.type] ~= nil then
        out.toolConfig.toolChoice = {[TOOL_CHOICE[choice.type]] = {}}
      end
    end
    return out
  end

  -- ------------------------------------------------------------------------- answers

  local STOP_REASON = {
    end_turn = "end_turn", tool_use = "tool_use", max_tokens = "max_tokens",
    stop_sequence = "stop_sequence", guardrail_intervened = "refusal",
    content_filtered = "refusal", model_context_window_exceeded = "model_context_window_exceeded",
  }

  local function number(value)
    return type(value) == "number" and value or 0
  end

  local function usage(counts)
    counts = type(counts) == "table" and counts or {}
    return {
      input_tokens = number(counts.inputTokens), output_tokens = number(counts.outputTokens),
      cache_read_input_tokens = number(counts.cacheReadInputTokens),
      cache_creation_input_tokens = number(counts.cacheWriteInputTokens),
    }
  end

  -- Converse answers carry no id; the request's id names the message.
  local function message_id(answer)
    if type(answer.id) == "string" and answer.id ~= "" then return "msg_bdrk_" .. answer.id end
    return format("msg_bdrk_%08x%08x", math.random(0, 0x7fffffff), os.time())
  end

  function converse.response(body, answer)
    local message = type(body.output) == "table" and body.output.message or {}
    local content = array()
    for _, block in ipairs(type(message.content) == "table" and message.content or {}) do
      if type(block.text) == "string" then
        content[#content + 1] = {type = "text", text = block.text}
      elseif type(block.toolUse) == "table" then
        local use = block.toolUse
        content[#content + 1] = {type = "tool_use", id = use.toolUseId, name = use.name, input = use.input or {}}
      end
    end
    return {
      id = message_id(answer), type = "message", role = "assistant", model = answer.model,
      content = content, stop_reason = STOP_REASON[body.stopReason] or "end_turn",
      stop_sequence = null, usage = usage(body.usage),
    }
  end

  -- ConverseStream's events as Anthropic's. Converse opens a tool use with contentBlockStart
  -- but text with its first delta; reasoning blocks are left out, so blocks are numbered anew.
  function converse.stream(answer)
    local blocks, next_block = {}, 0 -- Converse's block index -> {index, kind}
    local stop_reason, stopped = "end_turn", false
    local function emit(out, name, data)
      data.type = name
      out[#out + 1] = "event: " .. name .. "\ndata: " .. encode(data) .. "\n\n"
    end
    local function open(out, at, block)
      blocks[at] = {index = next_block, kind = block.type}
      next_block = next_block + 1
      emit(out, "content_block_start", {index = blocks[at].index, content_block = block})
      return blocks[at].index
    end
    local function close(out, at)
      local block = blocks[at]
      if block ~= nil and block.kind ~= nil then
        emit(out, "content_block_stop", {index = block.index})
        block.kind = nil
      end
    end
    return function(name, payload)
      local event = json.decode(payload)
      if type(event) ~= "table" then error("event stream: a " .. tostring(name) .. " event is not an object", 0) end
      local out, at = {}, event.contentBlockIndex
      if name == "messageStart" then
        emit(out, "message_start", {message = {
          id = message_id(answer), type = "message", role = "assistant", model = answer.model,
          content = array(), stop_reason = null, stop_sequence = null,
          usage = {input_tokens = 0, output_tokens = 0},
        }})
      elseif name == "contentBlockStart" then
        local use = type(event.start) == "table" and event.start.toolUse
        if type(use) == "table" then
          open(out, at, {type = "tool_use", id = use.toolUseId, name = use.name, input = {}})
        end
      elseif name == "contentBlockDelta" then
        local delta = type(event.delta) == "table" and event.delta or {}
        if type(delta.text) == "string" then
          local index = blocks[at] ~= nil and blocks[at].index or open(out, at, {type = "text", text = ""})
          emit(out, "content_block_delta", {index = index, delta = {type = "text_delta", text = delta.text}})
        elseif type(delta.toolUse) == "table" and blocks[at] ~= nil then
          emit(out, "content_block_delta", {index = blocks[at].index,
                                            delta = {type = "input_json_delta", partial_json = delta.toolUse.input}})
        end
      elseif name == "contentBlockStop" then
        close(out, at)
      elseif name == "messageStop" then
        for index in pairs(blocks) do close(out, index) end
        stop_reason = STOP_REASON[event.stopReason] or "end_turn"
      elseif name == "metadata" and not stopped then
        stopped = true
        emit(out, "message_delta", {delta = {stop_reason = stop_reason, stop_sequence = null},
                                    usage = usage(event.usage)})
        emit(out, "message_stop", {})
      end
      return table.concat(out)
    end
  end
end
