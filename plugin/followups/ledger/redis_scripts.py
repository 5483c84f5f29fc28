"""The Lua side of :class:`~followups.ledger.redis.RedisBackend`: one server-side script per
atomic operation of the ledger protocol.

Each script is :data:`PRELUDE` (shared helpers, a port of the memory backend's internals) plus
the body of one operation. A script reads its session's document (one JSON value under
``{prefix:session}:s``), changes it, writes it back, publishes its effects, and returns
``[result JSON, effects JSON]``. Scripts get the session key(s) as ``KEYS``; ``ARGV`` is
``[effects channel, origin id, request JSON, event log length]``; the last key is the
event log (a stream) of the first session named: a script with effects appends them there,
numbered (``n``) and trimmed to about the given length, and publishes them with the log's
name, the entry's id and number.

Times travel as strings (Python's ``repr`` of a float): Redis's JSON encoder keeps only 14
significant digits, which would move a timestamp. Scripts compare them with ``tonumber``.
"""

from __future__ import annotations

__all__ = ["OPERATIONS", "PRELUDE", "script_source"]

PRELUDE = r"""
local CHANNEL = ARGV[1]
local ORIGIN = ARGV[2]
local REQ = cjson.decode(ARGV[3])
local STREAM_LENGTH = ARGV[4]
local NULL = cjson.null
local FX = {}
local FREED_TOTAL = 0  -- store-wide slots given up by this operation (see the total_* scripts)

local function val(x) if x == NULL then return nil end return x end

-- A hash whose fields (JSON values) are read on first use and written back by save().
local function lazy(hash_key)
  local cache, seen, gone = {}, {}, {}
  local proxy = {}
  setmetatable(proxy, {
    __index = function(_, k)
      local v = cache[k]
      if v ~= nil or seen[k] then return v end
      seen[k] = true
      local raw = redis.call('HGET', hash_key, k)
      if raw then v = cjson.decode(raw); cache[k] = v end
      return v
    end,
    __newindex = function(_, k, v)
      seen[k] = true
      cache[k] = v
      if v == nil then gone[k] = true else gone[k] = nil end
    end,
  })
  return {proxy = proxy, cache = cache, gone = gone, key = hash_key}
end

local function call_chunked(command, key, items)
  -- unpack() has a stack limit: send at most 400 arguments per call
  local i = 1
  while i <= #items do
    local last = math.min(i + 399, #items)
    redis.call(command, key, unpack(items, i, last))
    i = last + 1
  end
end

local function flush_lazy(h)
  local fields = {}
  for k, v in pairs(h.cache) do
    fields[#fields + 1] = k
    fields[#fields + 1] = cjson.encode(v)
  end
  call_chunked('HSET', h.key, fields)
  local doomed = {}
  for k in pairs(h.gone) do doomed[#doomed + 1] = k end
  call_chunked('HDEL', h.key, doomed)
end

-- A session: its document under ``meta_key``, its runs and pending entries in two hashes.
local function load(meta_key, runs_key, pending_key, name)
  local raw = redis.call('GET', meta_key)
  local s
  if raw then s = cjson.decode(raw) else s = {} end
  s.exists = raw ~= false and raw ~= nil
  s.seq = s.seq or 0
  s.records = s.records or {}
  s.live = s.live or {}
  s.finished = s.finished or {}
  s.names = s.names or {}
  s.children = s.children or {}
  s.queue = s.queue or {}
  s.running = s.running or 0
  s.queued = s.queued or 0
  s.crun = s.crun or 0
  s.cq = s.cq or 0
  s.porder = s.porder or {}
  s.lk = s.lk or {}
  s.leases = s.leases or {}
  s.cleared = s.cleared or 0
  s.moved = s.moved or {}
  local runs, pending = lazy(runs_key), lazy(pending_key)
  setmetatable(s, {__index = {key = meta_key, name = name, hruns = runs, hpending = pending,
    runs = runs.proxy, pending = pending.proxy}})
  return s
end

local function save(s)
  local meta = getmetatable(s)
  setmetatable(s, nil)
  local exists = s.exists
  s.exists = nil
  redis.call('SET', meta.__index.key, cjson.encode(s))
  s.exists = exists
  setmetatable(s, meta)
  flush_lazy(s.hruns)
  flush_lazy(s.hpending)
end

local function finish_script(result)
  if FREED_TOTAL > 0 and result.err == nil then result.freed_total = FREED_TOTAL end
  local fx = '[]'
  if #FX > 0 then
    fx = cjson.encode(FX)
    if not REQ.quiet then
      -- the session's event log (the last key): each entry counts its lifecycle events (c)
      -- and the log's events so far (n), so a reader can count what a trim took from it
      local log = KEYS[#KEYS]
      local c = 0
      for _, e in ipairs(FX) do
        if e.type ~= 'changed' and e.type ~= 'action' then c = c + 1 end
      end
      local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
      local n = c
      if #last > 0 then n = tonumber(last[1][2][2]) + c end
      local id = redis.call('XADD', log, 'MAXLEN', '~', STREAM_LENGTH, '*', 'n', n, 'c', c, 'o', ORIGIN, 'fx', fx)
      redis.call('PUBLISH', CHANNEL, ORIGIN .. '\n' .. log .. ' ' .. id .. ' ' .. n .. '\n' .. fx)
    end
  end
  return {cjson.encode(result), fx}
end

local function err(kind, data)
  data = data or {}
  data.err = kind
  return data
end

local function remove_value(arr, v)
  for i = 1, #arr do
    if arr[i] == v then table.remove(arr, i); return true end
  end
  return false
end

local function contains(arr, v)
  for i = 1, #arr do if arr[i] == v then return true end end
  return false
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function chars(s)
  local _, n = string.gsub(s, '[^\128-\191]', '')
  return n
end

-- Python's repr of a str, for the messages the memory backend builds with !r.
local function pyrepr(s)
  local quote = "'"
  if string.find(s, "'", 1, true) and not string.find(s, '"', 1, true) then quote = '"' end
  local body = string.gsub(s, '\\', '\\\\')
  if quote == "'" then body = string.gsub(body, "'", "\\'") end
  return quote .. body .. quote
end

local function is_live(run) return run.st == 'queued' or run.st == 'running' end

local function ref_of(run) return {run.o, run.id, tonumber(run.g)} end

local function task_of(run, s)
  local t = {id = run.id, state = {run.st, run.tx}, description = run.d, session = s.name, kind = run.k,
    name = run.n, parent = run.p, generation = tonumber(run.g), created_at = run.ca, started_at = run.sa,
    finished_at = run.fa, progress = run.pr, progress_at = run.pa, cancel_requested_by = run.cb,
    close_policy = run.cp, relay_path = run.rp}
  if run.o ~= s.name then t.origin_session = run.o end
  return t
end

local function emit(e) FX[#FX + 1] = e end
local function emit_changed(s) emit({type = 'changed', session = s.name}) end
local function emit_action(run, action, reason)
  emit({type = 'action', epoch = run.ep, ref = ref_of(run), action = action, reason = reason or ''})
end
local function emit_cancel_requested(run, s, by, reason)
  emit({type = 'cancel_requested', id = run.id, by = by, reason = reason, session = s.name, kind = run.k})
end
local function emit_finished(n, kind)
  emit({type = 'finished', notification = n, kind = kind})
end

local function find_run(s, ref)
  -- ref = {session, task_id, generation}; returns run, or nil and the session it moved to
  local g = tostring(ref[3])
  local run = s.runs[g]
  if run ~= nil and run.o == ref[1] and run.id == ref[2] then return run, nil end
  if run == nil and s.moved[g] ~= nil then return nil, s.moved[g] end
  return nil, nil
end

local function available(s, key)
  local id = s.lk[key]
  if id == nil then return true end
  local lease = s.leases[id]
  return lease == nil or lease.ex == true
end

local function count_available(s)
  local n = 0
  for i = 1, #s.porder do
    if available(s, s.porder[i]) then n = n + 1 end
  end
  return n
end

local function uncount(s, e)
  if e.g ~= nil then
    local run = s.runs[e.g]
    if run ~= nil then run.pe = run.pe - 1 end
  end
end

local function delete_entry(s, key)
  local e = s.pending[key]
  s.pending[key] = nil
  s.lk[key] = nil
  remove_value(s.porder, key)
  uncount(s, e)
end

local function holds_any(s, id, lease)
  for i = 1, #lease.e do
    if s.lk[lease.e[i][1]] == id then return true end
  end
  return false
end

local function expire(s, now)
  local changed = false
  for id, lease in pairs(s.leases) do
    if not lease.ex and tonumber(lease.x) <= now then
      lease.ex = true
      changed = true
    end
  end
  if changed or next(s.leases) ~= nil then
    local stale = {}
    for id, lease in pairs(s.leases) do
      if lease.ex and not holds_any(s, id, lease) then stale[#stale + 1] = id end
    end
    for i = 1, #stale do s.leases[stale[i]] = nil; changed = true end
  end
  return changed
end

local function notification(run, s, seq, nid, kind, text)
  return {id = run.id, state = {run.st, text or run.tx}, sequence = seq, notification_id = nid,
    session = s.name, kind = kind}
end

local function queue_result(s, run)
  local g = run.g
  run.v = run.v + 1
  local nid = g .. '.' .. run.v
  local key = tostring(g)
  local e = s.pending[key]
  local n
  if e == nil then
    s.seq = s.seq + 1
    n = notification(run, s, s.seq, nid, 'result')
    s.pending[key] = {g = key, slot = 0, n = n, v = run.v, rp = run.rp}
    s.porder[#s.porder + 1] = key
    run.pe = run.pe + 1
  else
    n = notification(run, s, e.n.sequence, nid, 'result')
    e.n = n
    e.v = run.v
    e.rp = run.rp
    s.lk[key] = nil
  end
  emit_finished(n, run.k)
end

local cancel_run

local function admit_from(s, tot)
  -- admit the session's oldest queued capped run (returned, or false); ``tot``: it takes a
  -- store-wide slot
  while #s.queue > 0 do
    local g = table.remove(s.queue, 1)
    local run = s.runs[g]
    if run ~= nil and run.st == 'queued' and s.records[run.id] == g then
      run.st = 'running'; run.tx = ''
      run.tot = tot or nil
      s.queued = s.queued - 1
      s.cq = s.cq - 1
      s.running = s.running + 1
      s.crun = s.crun + 1
      emit_action(run, 'start')
      return run
    end
  end
  return false
end

local function release(s, run, was_queued, admit)
  if was_queued then
    s.queued = s.queued - 1
    if run.cap then s.cq = s.cq - 1 end
  else
    s.running = s.running - 1
    if run.cap then
      s.crun = s.crun - 1
      local handed = false
      if admit then handed = admit_from(s, run.tot) end
      if run.tot then
        run.tot = nil
        if not handed then FREED_TOTAL = FREED_TOTAL + 1 end
      end
    end
  end
end

local function cascade(s, parent, now)
  local kids = s.children[parent.id]
  if kids == nil then return end
  for _, child_id in ipairs(sorted_keys(kids)) do
    local g = s.records[child_id]
    local child = g and s.runs[g]
    if child and is_live(child) and child.cp == 'cancel' and child.p == parent.id then
      cancel_run(s, child, 'parent_finished', 'cancelled: its parent task ' .. pyrepr(parent.id) .. ' finished', now)
    end
  end
end

local function retire(s, run, st, tx, now, admit, do_cascade)
  local was_queued = run.st == 'queued'
  run.st = st; run.tx = tx
  run.fa = now
  remove_value(s.live, run.id)
  s.finished[#s.finished + 1] = run.id
  if run.n ~= nil and s.names[run.n] == run.id then s.names[run.n] = nil end
  release(s, run, was_queued, admit)
  if do_cascade then cascade(s, run, now) end
end

cancel_run = function(s, run, by, reason, now)
  if run.cb == nil then
    run.cb = by
    run.cr = reason
    emit_cancel_requested(run, s, by, reason)
  end
  emit_action(run, 'cancel', run.cr)
  if run.sa == nil and (run.st == 'queued' or run.cap) then
    retire(s, run, 'cancelled', run.cr, now, true, true)
    queue_result(s, run)
  end
end

local function remove_record(s, run)
  local tid = run.id
  if s.records[tid] == run.g then s.records[tid] = nil end
  remove_value(s.finished, tid)
  if run.p ~= nil then
    local sib = s.children[run.p]
    if sib ~= nil then
      sib[tid] = nil
      if next(sib) == nil then s.children[run.p] = nil end
    end
  end
  s.runs[run.g] = nil
end

local function drop_record(s, run, by, reason, admit)
  if is_live(run) then
    remove_value(s.live, run.id)
    if run.n ~= nil and s.names[run.n] == run.id then s.names[run.n] = nil end
    release(s, run, run.st == 'queued', admit)
    if by ~= nil then emit_cancel_requested(run, s, by, reason) end
    emit_action(run, 'cancel', reason)
  end
  remove_record(s, run)
end

local function evict_one(s)
  if #s.finished > 0 then
    local tid = table.remove(s.finished, 1)
    remove_record(s, s.runs[s.records[tid]])
    return nil
  end
  local tid = s.live[1]
  drop_record(s, s.runs[s.records[tid]], 'evicted', 'cancelled: evicted from a full store', true)
  return tid
end

local function resolve(s, key)
  local g = s.records[key]
  if g ~= nil then return s.runs[g] end
  local tid = s.names[key]
  if tid ~= nil then return s.runs[s.records[tid]] end
  local best = nil
  for _, rg in pairs(s.records) do
    local run = s.runs[rg]
    if run.n == key and (best == nil or tonumber(run.g) > tonumber(best.g)) then best = run end
  end
  return best
end

local function descendants(s, root)
  local found = {}
  local seen = {[root.id] = true}
  local stack = {root.id}
  while #stack > 0 do
    local current = table.remove(stack)
    local kids = s.children[current]
    if kids ~= nil then
      for _, child_id in ipairs(sorted_keys(kids)) do
        if not seen[child_id] then
          seen[child_id] = true
          local g = s.records[child_id]
          local child = g and s.runs[g]
          if child ~= nil and child.p == current then
            stack[#stack + 1] = child_id
            if is_live(child) then found[#found + 1] = child end
          end
        end
      end
    end
  end
  return found
end

local function lease_infos(s, now)
  local found = {}
  for id, lease in pairs(s.leases) do
    if not lease.ex then
      local ids, nids = {}, {}
      for i = 1, #lease.e do
        local pair = lease.e[i]
        local e = s.pending[pair[1]]
        if e ~= nil and s.lk[pair[1]] == id and e.v == pair[2] then
          ids[#ids + 1] = e.n.id
          nids[#nids + 1] = e.n.notification_id
        end
      end
      if #ids > 0 then found[#found + 1] = {id, ids, nids, lease.x} end
    end
  end
  table.sort(found, function(a, b) return tonumber(a[4]) < tonumber(b[4]) end)
  return found
end
"""

OPERATIONS: dict[str, str] = {}

OPERATIONS["create"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local tid = REQ.task_id
local eg = s.records[tid]
local existing = eg and s.runs[eg]
if existing and (REQ.if_exists == 'refuse' or (REQ.if_exists == 'refuse_live' and is_live(existing))) then
  return finish_script(err('task_id_in_use', {task_id = tid, status = existing.st}))
end
local name = val(REQ.name)
if name ~= nil then
  local holder = s.names[name]
  if holder ~= nil and holder ~= tid then return finish_script(err('name_in_use', {name = name, task_id = holder})) end
end
if #s.porder >= REQ.max_pending then
  return finish_script(err('pending_limit', {pending = #s.porder, limit = REQ.max_pending}))
end
local superseded_slot = existing and existing.cap and existing.st == 'running'
local max_running = val(REQ.max_running)
local total = val(REQ.max_running_total)
local st
local takes_total, waits_total = false, false
local reserved_taken = false  -- the run takes the slot reserved for it (REQ.total_slot)
if max_running ~= nil then
  s.cap = max_running
  local freed = 0
  if superseded_slot then freed = 1 end
  local under_cap = s.crun - freed < max_running
  -- the store-wide slot: reserved before this script (REQ.total_slot), or the superseded run's
  local inherits = superseded_slot and existing.tot
  local under_total = total == nil or REQ.total_slot == 1 or inherits
  if under_cap and under_total then
    st = 'running'
    takes_total = total ~= nil
  elseif REQ.when_full == 'queue' and s.cq < REQ.max_queued then
    st = 'queued'
    waits_total = under_cap and not under_total
  else
    local reason = 'cap'
    local running = s.crun
    if REQ.when_full == 'queue' then reason = 'queue_full'
    elseif under_cap then reason = 'total_cap'; running = REQ.total_running or 0 end
    return finish_script(err('admission', {reason = reason, running = running, queued = s.cq}))
  end
  reserved_taken = takes_total and REQ.total_slot == 1 and not inherits
  if inherits and takes_total then
    existing.tot = nil  -- its slot goes to the new run, not back to the store
    if REQ.total_slot == 1 then FREED_TOTAL = FREED_TOTAL + 1 end
  elseif REQ.total_slot == 1 and not takes_total then
    FREED_TOTAL = FREED_TOTAL + 1  -- the reserved slot was not used
  end
elseif REQ.queued then
  st = 'queued'
else
  st = 'running'
end
if existing then
  drop_record(s, existing, nil, 'cancelled: superseded by a new run of task ' .. pyrepr(tid), max_running == nil)
end
local evicted = nil
if not existing and count_keys(s.records) >= REQ.capacity then
  evicted = evict_one(s)
end
local g = tostring(REQ.generation)
local run = {g = g, o = s.name, id = tid, st = st, tx = '', d = REQ.description, k = REQ.kind, n = name,
  p = val(REQ.parent), cp = REQ.close_policy, ep = REQ.epoch, cap = max_running ~= nil, hi = REQ.has_inbox,
  ca = REQ.now, v = 0, q = 0, pe = 0, ib = {}, ic = false}
s.runs[g] = run
s.records[tid] = g
s.live[#s.live + 1] = tid
if name ~= nil then s.names[name] = tid end
if run.p ~= nil then
  local kids = s.children[run.p] or {}
  kids[tid] = true
  s.children[run.p] = kids
end
if st == 'queued' then
  s.queued = s.queued + 1
  if run.cap then s.cq = s.cq + 1; s.queue[#s.queue + 1] = g end
else
  s.running = s.running + 1
  if run.cap then s.crun = s.crun + 1 end
  if takes_total then run.tot = true end
  -- the run took the slot reserved for it: its token says so to a recovery pass
  if reserved_taken then run.tk = val(REQ.total_token) end
end
emit({type = 'registered', task = task_of(run, s)})
emit_changed(s)
save(s)
return finish_script({ref = ref_of(run), status = st, evicted = evicted, waits_total = waits_total})
"""

OPERATIONS["start"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run == nil or not is_live(run) or run.cb ~= nil or run.sa ~= nil then return finish_script({ok = false}) end
if run.st == 'queued' then
  if run.cap then return finish_script({ok = false}) end
  run.st = 'running'; run.tx = ''
  s.queued = s.queued - 1
  s.running = s.running + 1
end
run.sa = REQ.now
emit({type = 'started', id = run.id, session = s.name, kind = run.k})
save(s)
return finish_script({ok = true})
"""

OPERATIONS["progress"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run == nil or not is_live(run) then return finish_script({ok = false}) end
run.pr = REQ.message
run.pa = REQ.now
emit({type = 'progress', id = run.id, message = REQ.message, at = REQ.now, session = s.name, kind = run.k})
save(s)
return finish_script({ok = true})
"""

OPERATIONS["finish"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run == nil or run.se then return finish_script({ok = false}) end
local live = is_live(run)
if not live and run.dg == REQ.digest then return finish_script({ok = false}) end
if live then
  retire(s, run, REQ.state[1], REQ.state[2], REQ.now, true, true)
else
  run.st = REQ.state[1]; run.tx = REQ.state[2]
end
run.dg = REQ.digest
run.rp = val(REQ.relay_path)
queue_result(s, run)
emit_changed(s)
save(s)
return finish_script({ok = true})
"""

OPERATIONS["request_cancel"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local sel = REQ.selection
local ids = val(sel.ids)
if not s.exists then return finish_script({requested = {}, not_live = {}, unknown = ids or {}}) end
local not_live, unknown, roots = {}, {}, {}
if ids == nil then
  for i = 1, #s.live do roots[#roots + 1] = s.runs[s.records[s.live[i]]] end
else
  for _, key in ipairs(ids) do
    local run = resolve(s, key)
    if run == nil then
      unknown[#unknown + 1] = key
    elseif is_live(run) or sel.tree or sel.descendants_only then
      roots[#roots + 1] = run
      if not is_live(run) and not sel.descendants_only then not_live[#not_live + 1] = {key, run.st} end
    else
      not_live[#not_live + 1] = {key, run.st}
    end
  end
end
local chosen, order = {}, {}
local function choose(run)
  if chosen[run.id] == nil then chosen[run.id] = run; order[#order + 1] = run end
end
for _, root in ipairs(roots) do
  if not sel.descendants_only and is_live(root) then choose(root) end
  if sel.tree or sel.descendants_only then
    for _, d in ipairs(descendants(s, root)) do choose(d) end
  end
end
local keep = {}
for _, k in ipairs(sel.keep or {}) do keep[k] = true end
local kind, policy = val(sel.kind), val(sel.close_policy)
local targets, requested = {}, {}
for _, run in ipairs(order) do
  if (kind == nil or run.k == kind) and (policy == nil or run.cp == policy) and not keep[run.id] then
    targets[#targets + 1] = run
    requested[#requested + 1] = run.id
  end
end
for _, run in ipairs(targets) do cancel_run(s, run, REQ.by, REQ.reason, REQ.now) end
if #targets > 0 then emit_changed(s); save(s) end
return finish_script({requested = requested, not_live = not_live, unknown = unknown})
"""

OPERATIONS["cancel_all"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if not s.exists then return finish_script({ids = {}}) end
local reason = REQ.reason
local cancelled = {}
for i = 1, #s.live do cancelled[#cancelled + 1] = s.runs[s.records[s.live[i]]] end
local ids = {}
for _, run in ipairs(cancelled) do
  emit_action(run, 'cancel', reason)
  run.cb = 'cancel_all'
  run.cr = reason
  run.se = true
  retire(s, run, 'cancelled', reason, REQ.now, false, false)
  emit_finished({id = run.id, state = {'cancelled', reason}, sequence = 0, notification_id = '',
    session = s.name, kind = 'result'}, run.k)
  ids[#ids + 1] = run.id
end
for _, key in ipairs(s.porder) do
  uncount(s, s.pending[key])
  s.pending[key] = nil
end
s.porder = {}
s.lk = {}
s.queue = {}
s.cleared = s.seq
emit_changed(s)
save(s)
return finish_script({ids = ids})
"""

OPERATIONS["transfer"] = r"""
local src = load(KEYS[1], KEYS[2], KEYS[3], REQ.from_session)
if not src.exists then return finish_script({ids = {}}) end
local dst = load(KEYS[4], KEYS[5], KEYS[6], REQ.to_session)
local wanted = nil
if val(REQ.task_ids) ~= nil then
  wanted = {}
  for _, id in ipairs(REQ.task_ids) do wanted[id] = true end
end
local moving = {}
for i = 1, #src.live do
  local tid = src.live[i]
  if wanted == nil or wanted[tid] then moving[#moving + 1] = src.runs[src.records[tid]] end
end
local clash_ids, clash_names = {}, {}
for _, run in ipairs(moving) do
  local tg = dst.records[run.id]
  if tg ~= nil and is_live(dst.runs[tg]) then clash_ids[#clash_ids + 1] = run.id end
end
for _, run in ipairs(moving) do
  if run.n ~= nil and dst.names[run.n] ~= nil then clash_names[#clash_names + 1] = run.n end
end
if #clash_ids > 0 or #clash_names > 0 then
  return finish_script(err('transfer_conflict', {ids = clash_ids, names = clash_names}))
end
local ids = {}
for _, run in ipairs(moving) do
  local tid = run.id
  remove_value(src.live, tid)
  src.records[tid] = nil
  if run.n ~= nil and src.names[run.n] == tid then src.names[run.n] = nil end
  if run.p ~= nil and src.children[run.p] ~= nil then src.children[run.p][tid] = nil end
  if run.st == 'queued' then
    src.queued = src.queued - 1
    dst.queued = dst.queued + 1
    if run.cap then
      src.cq = src.cq - 1
      dst.cq = dst.cq + 1
      dst.queue[#dst.queue + 1] = run.g
    end
  else
    src.running = src.running - 1
    dst.running = dst.running + 1
    if run.cap then
      src.crun = src.crun - 1
      dst.crun = dst.crun + 1
    end
  end
  local rg = dst.records[tid]
  if rg ~= nil then
    local saved = FX
    FX = {}
    drop_record(dst, dst.runs[rg], nil, '', true)
    FX = saved
  end
  src.runs[run.g] = nil
  src.moved[run.g] = dst.name
  dst.runs[run.g] = run
  dst.records[tid] = run.g
  dst.live[#dst.live + 1] = tid
  if run.n ~= nil then dst.names[run.n] = tid end
  if run.p ~= nil then
    local kids = dst.children[run.p] or {}
    kids[tid] = true
    dst.children[run.p] = kids
  end
  emit({type = 'transferred', id = tid, from_session = src.name, session = dst.name, kind = run.k})
  ids[#ids + 1] = tid
end
local keep_order = {}
local moved_keys = {}
for _, key in ipairs(src.porder) do
  local e = src.pending[key]
  if wanted == nil or wanted[e.n.id] then
    src.pending[key] = nil
    if e.g ~= nil and src.runs[e.g] ~= nil then
      src.runs[e.g].pe = src.runs[e.g].pe - 1
    end
    dst.seq = dst.seq + 1
    e.n.sequence = dst.seq
    e.n.session = dst.name
    dst.pending[key] = e
    dst.porder[#dst.porder + 1] = key
    moved_keys[key] = true
    local lid = src.lk[key]
    src.lk[key] = nil
    dst.lk[key] = lid
    if lid ~= nil and src.leases[lid] ~= nil then
      local lease = src.leases[lid]
      local stub = dst.leases[lid]
      if stub == nil then
        stub = {e = {}, x = lease.x, ep = lease.ep, ex = lease.ex}
        dst.leases[lid] = stub
      end
      lease.fw = lease.fw or {}
      if not contains(lease.fw, dst.name) then lease.fw[#lease.fw + 1] = dst.name end
    end
  else
    keep_order[#keep_order + 1] = key
  end
end
src.porder = keep_order
for id, lease in pairs(src.leases) do
  local kept = {}
  for _, pair in ipairs(lease.e) do
    if moved_keys[pair[1]] then
      local stub = dst.leases[id]
      if stub ~= nil then stub.e[#stub.e + 1] = pair end
    else
      kept[#kept + 1] = pair
    end
  end
  lease.e = kept
end
emit_changed(src)
emit_changed(dst)
save(src)
save(dst)
return finish_script({ids = ids})
"""

OPERATIONS["send"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local target = REQ.target
local run = resolve(s, target)
if run == nil then return finish_script(err('unknown_task', {task = target})) end
if not is_live(run) then return finish_script(err('already_finished', {task = target, status = run.st})) end
if not run.hi then return finish_script(err('no_inbox', {task = target})) end
if run.ic then return finish_script(err('inbox_closed', {task = target})) end
if #run.ib >= REQ.max_messages then return finish_script(err('inbox_full', {task = target, limit = REQ.max_messages})) end
run.ib[#run.ib + 1] = REQ.message
emit_action(run, 'inbox')
save(s)
return finish_script({ref = ref_of(run)})
"""

OPERATIONS["take_inbox"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run == nil or #run.ib == 0 then return finish_script({messages = {}}) end
local messages = run.ib
run.ib = {}
save(s)
return finish_script({messages = messages})
"""

OPERATIONS["close_inbox"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run ~= nil then run.ic = true; save(s) end
return finish_script({ok = true})
"""

OPERATIONS["ask"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run == nil or not is_live(run) then return finish_script({id = NULL}) end
run.q = run.q + 1
s.seq = s.seq + 1
local nid = run.g .. '.q' .. run.q
local n = notification(run, s, s.seq, nid, 'question', REQ.question)
s.pending[nid] = {g = run.g, slot = run.q, n = n, v = 0}
s.porder[#s.porder + 1] = nid
run.pe = run.pe + 1
emit_changed(s)
save(s)
return finish_script({id = nid})
"""

OPERATIONS["lease"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local now = tonumber(REQ.now)
local dirty = expire(s, now)
local budget, limit, overhead = val(REQ.max_chars), val(REQ.max_entries), REQ.item_overhead
local taken, pairs_taken = {}, {}
local used = 0
local id = REQ.lease_id
for _, key in ipairs(s.porder) do
  if available(s, key) then
    local e = s.pending[key]
    local n = e.n
    local stop = false
    if budget ~= nil then
      local weight = chars(n.id) + chars(n.state[2]) + overhead
      if #taken > 0 and used + weight > budget then stop = true else used = used + weight end
    end
    if stop then break end
    s.lk[key] = id
    pairs_taken[#pairs_taken + 1] = {key, e.v}
    taken[#taken + 1] = n
    if limit ~= nil and #taken >= limit then break end
  end
end
if #taken == 0 then
  if dirty then save(s) end
  return finish_script({lease = NULL})
end
s.leases[id] = {e = pairs_taken, x = REQ.expires_at, ep = REQ.epoch, ex = false}
local remaining = count_available(s)
emit_changed(s)
save(s)
return finish_script({lease = {id = id, notifications = taken, expires_at = REQ.expires_at, remaining = remaining}})
"""

OPERATIONS["confirm"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local dirty = expire(s, tonumber(REQ.now))
local id = REQ.lease_id
local lease = s.leases[id]
if lease == nil then
  if dirty then save(s) end
  return finish_script({deleted = 0, fw = {}})
end
s.leases[id] = nil
local deleted = 0
for _, pair in ipairs(lease.e) do
  local e = s.pending[pair[1]]
  if e ~= nil and e.v == pair[2] and s.lk[pair[1]] == id then
    delete_entry(s, pair[1])
    deleted = deleted + 1
  end
end
if deleted > 0 then emit_changed(s) end
save(s)
return finish_script({deleted = deleted, fw = lease.fw or {}})
"""

OPERATIONS["give_back"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local id = REQ.lease_id
local lease = s.leases[id]
if lease == nil then return finish_script({returned = 0, fw = {}}) end
local only = nil
if val(REQ.only) ~= nil then
  only = {}
  for _, nid in ipairs(REQ.only) do only[nid] = true end
end
local keep = {}
local returned = 0
local touched = false
for _, pair in ipairs(lease.e) do
  local e = s.pending[pair[1]]
  if only ~= nil and (e == nil or not only[e.n.notification_id]) then
    keep[#keep + 1] = pair
  elseif e ~= nil and s.lk[pair[1]] == id then
    s.lk[pair[1]] = nil
    if not lease.ex then touched = true end
    returned = returned + 1
  end
end
local fw = lease.fw or {}
if #keep > 0 then lease.e = keep else s.leases[id] = nil end
if touched then emit_changed(s) end
save(s)
return finish_script({returned = returned, fw = fw})
"""

OPERATIONS["acknowledge"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local dirty = expire(s, tonumber(REQ.now))
local wanted = {}
for _, nid in ipairs(REQ.ids) do wanted[nid] = true end
local doomed = {}
for _, key in ipairs(s.porder) do
  if wanted[s.pending[key].n.notification_id] then doomed[#doomed + 1] = key end
end
for _, key in ipairs(doomed) do delete_entry(s, key) end
if #doomed > 0 then emit_changed(s) end
if #doomed > 0 or dirty then save(s) end
return finish_script({deleted = #doomed})
"""

OPERATIONS["restore"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if not s.exists then return finish_script({restored = 0}) end
expire(s, tonumber(REQ.now))
local restored = 0
for _, n in ipairs(REQ.notifications) do
  if not (n.sequence > 0 and n.sequence <= s.cleared) then
    local nid = n.notification_id
    local gen, rest = string.match(nid, '^(%d+)%.(.*)$')
    local key, slot = nil, 0
    if gen ~= nil then
      local q = string.match(rest, '^q(%d+)$')
      if q ~= nil then key = nid; slot = tonumber(q) else key = gen end
    end
    if key ~= nil then
      local e = s.pending[key]
      if e ~= nil then
        local old = e.n
        e.n = {id = old.id, state = old.state, sequence = n.sequence, notification_id = old.notification_id,
          session = s.name, kind = old.kind}
      else
        local run = s.runs[gen]
        local g = nil
        if run ~= nil then run.pe = run.pe + 1; g = gen end
        s.pending[key] = {g = g, slot = slot, n = n, v = 0}
        s.porder[#s.porder + 1] = key
      end
      restored = restored + 1
    end
  end
end
if restored > 0 then
  table.sort(s.porder, function(a, b) return s.pending[a].n.sequence < s.pending[b].n.sequence end)
  emit_changed(s)
end
save(s)
return finish_script({restored = restored})
"""

OPERATIONS["recover"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if not s.exists then return finish_script({orphaned = 0, epochs = {}}) end
local now = tonumber(REQ.now)
local before = count_available(s)
local dirty = false
if REQ.expire then dirty = expire(s, now) end  -- a heartbeat's pass only orphans
local dead = REQ.dead or {}
for _, lease in pairs(s.leases) do  -- a dead worker's deliveries reopen with its runs
  if not lease.ex and dead[lease.ep] ~= nil then lease.ex = true; dirty = true end
end
local orphans = {}
for i = 1, #s.live do
  local run = s.runs[s.records[s.live[i]]]
  if dead[run.ep] ~= nil then orphans[#orphans + 1] = run end
end
for _, run in ipairs(orphans) do
  if is_live(run) then
    if run.cb ~= nil then
      retire(s, run, 'cancelled', run.cr, REQ.now, true, true)
    else
      retire(s, run, 'failed', 'orphaned: ' .. dead[run.ep], REQ.now, true, true)
    end
    queue_result(s, run)
  end
end
local epochs = {}
local seen = {}
for i = 1, #s.live do
  local ep = s.runs[s.records[s.live[i]]].ep
  if not seen[ep] then seen[ep] = true; epochs[#epochs + 1] = ep end
end
-- store-wide reservations of dead workers made for this session: which a run took
local consumed = {}
local wanted = {}
for _, token in ipairs(REQ.tokens or {}) do wanted[token] = true end
if next(wanted) ~= nil then
  for _, g in pairs(s.records) do
    local run = s.runs[g]
    if run ~= nil and run.tk ~= nil and wanted[run.tk] then consumed[#consumed + 1] = run.tk end
  end
end
if #orphans > 0 or count_available(s) ~= before then emit_changed(s) end
if #orphans > 0 or dirty then save(s) end
return finish_script({orphaned = #orphans, epochs = epochs, consumed = consumed})
"""

OPERATIONS["gc_finished"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if not s.exists then return finish_script({removed = 0}) end
local doomed = {}
for _, tid in ipairs(s.finished) do
  local run = s.runs[s.records[tid]]
  if run.pe == 0 then doomed[#doomed + 1] = run end
end
for _, run in ipairs(doomed) do remove_record(s, run) end
if #doomed > 0 then emit_changed(s); save(s) end
return finish_script({removed = #doomed})
"""

OPERATIONS["get"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local run = resolve(s, REQ.key)
if run == nil then return finish_script({task = NULL}) end
return finish_script({task = task_of(run, s)})
"""

OPERATIONS["get_run"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.ref[1])
local run, moved = find_run(s, REQ.ref)
if moved then return finish_script({moved = moved}) end
if run == nil then return finish_script({task = NULL}) end
return finish_script({task = task_of(run, s), digest = run.dg})
"""

OPERATIONS["list"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local status, kind, parent = val(REQ.status), val(REQ.kind), val(REQ.parent)
local tasks = {}
for _, g in pairs(s.records) do
  local run = s.runs[g]
  if (status == nil or run.st == status) and (kind == nil or run.k == kind) and (parent == nil or run.p == parent) then
    tasks[#tasks + 1] = task_of(run, s)
  end
end
return finish_script({tasks = tasks})
"""

OPERATIONS["counts"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local now = tonumber(REQ.now)
if expire(s, now) then save(s) end
local next_expiry = nil
for _, lease in pairs(s.leases) do
  if not lease.ex and #lease.e > 0 and (next_expiry == nil or tonumber(lease.x) < tonumber(next_expiry)) then
    next_expiry = lease.x
  end
end
local avail = count_available(s)
return finish_script({live = #s.live, running = s.running, queued = s.queued, pending = avail,
  leased = #s.porder - avail, records = count_keys(s.records), next_expiry = next_expiry or NULL})
"""

OPERATIONS["leases"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if expire(s, tonumber(REQ.now)) then save(s) end
return finish_script({leases = lease_infos(s, tonumber(REQ.now))})
"""

OPERATIONS["pending"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if expire(s, tonumber(REQ.now)) then save(s) end
local found = {}
for _, key in ipairs(s.porder) do
  if available(s, key) then found[#found + 1] = s.pending[key].n end
end
return finish_script({notifications = found})
"""

OPERATIONS["info"] = r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local paths = {}
for _, key in ipairs(s.porder) do
  local rp = s.pending[key].rp
  if rp ~= nil then paths[#paths + 1] = rp end
end
for _, g in pairs(s.records) do
  local rp = s.runs[g].rp
  if rp ~= nil then paths[#paths + 1] = rp end
end
return finish_script({used = next(s.records) ~= nil or #s.porder > 0, paths = paths})
"""


OPERATIONS["resync"] = r"""
-- what a worker may have missed while its listener was away: the actions its live runs are
-- owed (a cancel requested, a start granted, unread messages), and a change to re-check
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
if not s.exists then return finish_script({}) end
local mine = {}
for _, ep in ipairs(REQ.epochs) do mine[ep] = true end
for i = 1, #s.live do
  local run = s.runs[s.records[s.live[i]]]
  if mine[run.ep] then
    if run.cb ~= nil then emit_action(run, 'cancel', run.cr)
    elseif run.st == 'running' and run.cap and run.sa == nil then emit_action(run, 'start') end
    if #run.ib > 0 then emit_action(run, 'inbox') end
  end
end
emit_changed(s)
return finish_script({})
"""

OPERATIONS["admit"] = r"""
-- a store-wide slot was reserved for this session: admit its oldest queued capped run with it
local s = load(KEYS[1], KEYS[2], KEYS[3], REQ.session)
local admitted = false
if s.exists and (s.cap == nil or s.crun < s.cap) then
  local run = admit_from(s, true)
  if run then
    admitted = true
    run.tk = val(REQ.total_token)
  end
end
if admitted then emit_changed(s); save(s) end
return finish_script({admitted = admitted, queued = s.cq})
"""

# The store-wide cap's counter, under its own key (its own slot): a slot is reserved here before
# a session's create script takes it, and given back after an operation freed it, so the count
# of runs holding one never exceeds the cap, whichever sessions and slots they live in.
TOTAL_SCRIPTS: dict[str, str] = {
    # ARGV: cap, reservation token, its owner ("EPOCH\tSESSION"); KEYS: total, reservations
    "acquire": r"""
redis.call('HSET', KEYS[1], 'cap', ARGV[1])
local running = tonumber(redis.call('HGET', KEYS[1], 'running') or '0')
if running < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'running', running + 1)
  if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
  return {1, running + 1}
end
return {0, running}
""",
    # ARGV: slots given back, session done waiting (or ''), reservation settled (or '');
    # KEYS: total, waiting sessions, reservations
    "release": r"""
local running = tonumber(redis.call('HGET', KEYS[1], 'running') or '0') - tonumber(ARGV[1])
if running < 0 then running = 0 end
redis.call('HSET', KEYS[1], 'running', running)
if ARGV[2] ~= '' then redis.call('SREM', KEYS[2], ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[3], ARGV[3]) end
return {redis.call('HGET', KEYS[1], 'cap') or '', redis.call('SMEMBERS', KEYS[2])}
""",
    # recovery: ARGV[1] = how many of the tokens after it no run took (each gives its slot
    # back, once, whoever settles it first); the rest were taken and are only forgotten.
    # KEYS: total, reservations
    "settle": r"""
local unused = tonumber(ARGV[1])
local released = 0
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 and i <= unused + 1 then released = released + 1 end
end
if released > 0 then
  local running = tonumber(redis.call('HGET', KEYS[1], 'running') or '0') - released
  if running < 0 then running = 0 end
  redis.call('HSET', KEYS[1], 'running', running)
end
return released
""",
    "wait": r"""
redis.call('SADD', KEYS[2], ARGV[1])
return 1
""",
}


def script_source(operation: str) -> str:
    """The full Lua source of ``operation``'s script."""
    return PRELUDE + OPERATIONS[operation]
