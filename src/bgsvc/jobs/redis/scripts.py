"""The Lua scripts of the Redis job store: each state change is one atomic script.

A job is a hash ``<prefix>job:<id>``; its webhook attempts a list ``<prefix>job:<id>:wh``.
Indexes (sorted sets of job ids): ``queued`` and ``running`` (score: created_at and
started_at, for the queue metrics and the reconciler), ``finished`` (finished_at, for
expiry), ``expired`` (for the purge) and ``waiting`` (created_at: the videos waiting on
their segments, for expiry). The hash field ``msg`` names the one queue message that may
run the job; ``hb`` the dramatiq broker (heartbeat id) of its runner.

A video cut into segments: its hash has ``segments`` (their count); each segment is a job
of its own whose hash has ``parent``, and whose id is ``<parent>_s<index>``
(bgsvc.jobs.model.segment_id, which the scripts below spell out).
"""

from __future__ import annotations

# Counts a tenant's unfinished jobs in its set (KEYS[n]) of job ids, pruning the ids found
# final or gone however they ended (runner, cancel, expiry, delete, purge): no state change
# has to remember the set, and it holds little more than the tenant's unfinished jobs since
# every submission counts it. An id without a record younger than a minute is a batch still
# being written, and counts. A video waiting on its segments counts (its segments are never
# in the set).
_OPEN_COUNT = """
local function open_count(set, prefix, now)
    local open = 0
    local found = redis.call('zrange', set, 0, -1, 'withscores')
    for i = 1, #found, 2 do
        local status = redis.call('hget', prefix .. found[i], 'status')
        if status == 'queued' or status == 'running' or status == 'waiting'
            or (not status and tonumber(found[i + 1]) > now - 60) then
            open = open + 1
        else
            redis.call('zrem', set, found[i])
        end
    end
    return open
end
"""

# Whether ``n`` more jobs fit the queue (KEYS: queued, running, waiting) and the tenant's
# share (its set, or ""): "" if so, else "full:queue:<unfinished>" or
# "full:tenant:<unfinished>". A video cut into segments takes one place, as it did when
# submitted: its segments are queued with no room checked, and were each a place, one
# key's few long videos would fill the queue past its share, for every other key.
_PLACES = """
local function places(queued, running, waiting, prefix)
    local unfinished = redis.call('zcard', queued) + redis.call('zcard', running)
    for _, video in ipairs(redis.call('zrange', waiting, 0, -1)) do
        unfinished = unfinished + 1
        local key = prefix .. video
        for i = 0, (tonumber(redis.call('hget', key, 'segments')) or 0) - 1 do
            local status = redis.call('hget', key .. '_s' .. i, 'status')
            if status == 'queued' or status == 'running' then unfinished = unfinished - 1 end
        end
    end
    return unfinished
end
"""

_ROOM = """
local function room(queued, running, waiting, set, prefix, now, n, limit, per_tenant)
    local unfinished = places(queued, running, waiting, prefix)
    if unfinished + n > limit then return 'full:queue:' .. unfinished end
    if set ~= '' then
        local mine = open_count(set, prefix, now)
        if mine + n > per_tenant then return 'full:tenant:' .. mine end
    end
    return ''
end
"""

# KEYS: job, idem (or ""), queued, running, the tenant's open jobs (or ""), waiting.
# ARGV: idem_ttl_ms,
# created_at, job key prefix, id, limit, per_tenant, then field/value pairs.
# Returns "" when created, "full:..." (see _ROOM) when there is no room, else the id of the
# job the idempotency key already names (found first: a retry gets its job, room or not).
CREATE = (
    _OPEN_COUNT
    + _PLACES
    + _ROOM
    + """
if KEYS[2] ~= '' then
    local existing = redis.call('get', KEYS[2])
    if existing and redis.call('exists', ARGV[3] .. existing) == 1 then
        return existing
    end
end
local full = room(KEYS[3], KEYS[4], KEYS[6], KEYS[5], ARGV[3], tonumber(ARGV[2]), 1,
    tonumber(ARGV[5]), tonumber(ARGV[6]))
if full ~= '' then return full end
if KEYS[2] ~= '' then redis.call('set', KEYS[2], ARGV[4], 'px', ARGV[1]) end
redis.call('hset', KEYS[1], unpack(ARGV, 7))
redis.call('zadd', KEYS[3], ARGV[2], ARGV[4])
if KEYS[5] ~= '' then redis.call('zadd', KEYS[5], ARGV[2], ARGV[4]) end
return ''
"""
)

# KEYS: batch, batches, queued, running, the tenant's open jobs (or ""), waiting.
# ARGV: created_at,
# job key prefix, limit, per_tenant, the batch's fields (JSON object), its jobs' fields (JSON
# list of objects, each with "id"). All jobs and the batch, or "full:..." and nothing.
CREATE_BATCH = (
    _OPEN_COUNT
    + _PLACES
    + _ROOM
    + """
local jobs = cjson.decode(ARGV[6])
local now = tonumber(ARGV[1])
local full = room(KEYS[3], KEYS[4], KEYS[6], KEYS[5], ARGV[2], now, #jobs, tonumber(ARGV[3]),
    tonumber(ARGV[4]))
if full ~= '' then return full end
for field, value in pairs(cjson.decode(ARGV[5])) do redis.call('hset', KEYS[1], field, value) end
redis.call('zadd', KEYS[2], ARGV[1], cjson.decode(ARGV[5])['id'])
for _, job in ipairs(jobs) do
    for field, value in pairs(job) do redis.call('hset', ARGV[2] .. job['id'], field, value) end
    redis.call('zadd', KEYS[3], ARGV[1], job['id'])
    if KEYS[5] ~= '' then redis.call('zadd', KEYS[5], ARGV[1], job['id']) end
end
return ''
"""
)

# KEYS: the tenant's open jobs. ARGV: job key prefix, now.
TENANT_UNFINISHED = _OPEN_COUNT + "return open_count(KEYS[1], ARGV[1], tonumber(ARGV[2]))"

# KEYS: queued, running, waiting. ARGV: job key prefix. The places of the queue's room that
# are taken, as CREATE counts them.
PLACES = _PLACES + "return places(KEYS[1], KEYS[2], KEYS[3], ARGV[1])"


# KEYS: job, queued, running, heartbeats, turns, clock. ARGV: message_id, owner, hb, now,
# hb_timeout_ms, now_ms, id, prefix of the keys' queued turns. Returns "ok" (now running
# for owner), or why the message is to be dropped: "gone" (no such job), "stale" (an older
# message of the job), "final", "busy" (running for a live runner). A claim moves the clock
# of turns (PLACE) to the job's turn.
CLAIM = """
local fields = redis.call('hmget', KEYS[1], 'status', 'msg', 'hb')
local status, msg, hb = fields[1], fields[2], fields[3]
if not status then return 'gone' end
if msg ~= ARGV[1] then return 'stale' end
if status == 'running' then
    -- The same message again: dramatiq redelivers it once the runner's heartbeat is
    -- older than the timeout. Take over only then; never from a live runner.
    local beat = hb and redis.call('zscore', KEYS[4], hb)
    if beat and tonumber(ARGV[6]) - tonumber(beat) < tonumber(ARGV[5]) then
        return 'busy'
    end
elseif status ~= 'queued' then
    return 'final'
end
redis.call('hset', KEYS[1], 'status', 'running', 'owner', ARGV[2], 'hb', ARGV[3],
    'started_at', ARGV[4])
redis.call('hincrby', KEYS[1], 'attempts', 1)
redis.call('zrem', KEYS[2], ARGV[7])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[7])
local turn = tonumber(redis.call('hget', KEYS[1], 'turn'))
if turn then
    local clock = math.max(tonumber(redis.call('get', KEYS[6])) or 0, turn)
    redis.call('set', KEYS[6], string.format('%.0f', clock))
    local key = redis.call('hget', KEYS[1], 'tenant') or ''
    redis.call('zrem', ARGV[8] .. (key == '' and 'keyless' or ('key:' .. key)), ARGV[7])
end
local rmid = redis.call('hget', KEYS[1], 'rmid')
if rmid and rmid ~= '' then redis.call('zrem', KEYS[5], rmid) end
return 'ok'
"""

# KEYS: job, queued, running. ARGV: owner, error_code, error_message, new message_id, id,
# "keep" to keep the job's turn (else PLACE gives it its key's next one).
REQUEUE = """
local fields = redis.call('hmget', KEYS[1], 'status', 'owner', 'created_at')
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'status', 'queued', 'owner', '', 'hb', '', 'error_code', ARGV[2],
    'error_message', ARGV[3], 'msg', ARGV[4], 'rmid', '')
if ARGV[6] ~= 'keep' then redis.call('hdel', KEYS[1], 'turn') end
redis.call('zrem', KEYS[3], ARGV[5])
redis.call('zadd', KEYS[2], fields[3], ARGV[5])
return 1
"""

# KEYS: job, running, finished, queued, waiting. ARGV: owner, status, now, id, job key
# prefix, a new message_id (for the parent), then field/value pairs. Returns 0 (not the
# owner's running job), 1 (ended), or, when the job is the last of a waiting video's
# segments to end (however they ended), the video's id: queued again in the same step with
# the new message_id, which the caller enqueues.
FINISH = """
local fields = redis.call('hmget', KEYS[1], 'status', 'owner', 'finished_at', 'parent')
-- This very finish again: its reply was lost with a dropped connection (Redis killed or
-- restarted after applying it), and the caller retried. Answered as the first time, so
-- the runner still does what follows a finish (the upload's removal, the webhook). A
-- parent the first one queued is left alone (the reconciler sends a message lost so).
if fields[1] == ARGV[2] and fields[3] == ARGV[3] then return 1 end
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'owner', '', 'hb', '')
if #ARGV > 6 then redis.call('hset', KEYS[1], unpack(ARGV, 7)) end
redis.call('zrem', KEYS[2], ARGV[4])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
local parent = fields[4]
if not parent or parent == '' then return 1 end
local key = ARGV[5] .. parent
local video = redis.call('hmget', key, 'status', 'segments', 'created_at')
if video[1] ~= 'waiting' then return 1 end
for i = 0, (tonumber(video[2]) or 0) - 1 do
    local status = redis.call('hget', key .. '_s' .. i, 'status')
    if status == 'queued' or status == 'running' then return 1 end
end
redis.call('hset', key, 'status', 'queued', 'owner', '', 'hb', '', 'msg', ARGV[6], 'rmid', '')
redis.call('zrem', KEYS[5], parent)
redis.call('zadd', KEYS[4], video[3], parent)
return parent
"""

# Removes a job's hash, webhook list and index entries.
_DROP = """
local function drop(prefix, id, indexes)
    redis.call('del', prefix .. id, prefix .. id .. ':wh')
    for _, index in ipairs(indexes) do redis.call('zrem', index, id) end
end
"""

# KEYS: job, queued, running, finished, expired, waiting. ARGV: owner, frames in all, id,
# number of segments, job key prefix, the segments' fields (JSON list of objects, each with
# "id" and "created_at"). The owner's running job waits on its segments, queued here;
# 1, or 0 and nothing changed when it is not (no longer) the owner's.
SPLIT = (
    _DROP
    + """
local fields = redis.call('hmget', KEYS[1], 'status', 'owner', 'created_at', 'segments')
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then return 0 end
-- Its attempts start over: the stitch's claim is not another try at the split.
redis.call('hset', KEYS[1], 'status', 'waiting', 'owner', '', 'hb', '', 'segments', ARGV[4],
    'frames_total', ARGV[2], 'frames_done', '0', 'attempts', '0')
redis.call('zrem', KEYS[3], ARGV[3])
redis.call('zadd', KEYS[6], fields[3], ARGV[3])
local indexes = {KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
-- The same video cut again (segment ids are derived): this cut replaces the last one's.
for i = 0, (tonumber(fields[4]) or 0) - 1 do drop(ARGV[5], ARGV[3] .. '_s' .. i, indexes) end
for _, job in ipairs(cjson.decode(ARGV[6])) do
    drop(ARGV[5], job['id'], indexes)
    local key = ARGV[5] .. job['id']
    for field, value in pairs(job) do redis.call('hset', key, field, value) end
    redis.call('zadd', KEYS[2], job['created_at'], job['id'])
end
return 1
"""
)

# KEYS: queued, running, finished, expired, waiting. ARGV: job key prefix, id. The job and
# its segments, at once.
DELETE = (
    _DROP
    + """
local segments = tonumber(redis.call('hget', ARGV[1] .. ARGV[2], 'segments')) or 0
for i = 0, segments - 1 do drop(ARGV[1], ARGV[2] .. '_s' .. i, KEYS) end
drop(ARGV[1], ARGV[2], KEYS)
return segments
"""
)

# KEYS: a job's or batch's hash, its webhook list. ARGV: the attempt. A delivery still
# retrying when its record was deleted writes nothing: a list made again after the delete
# would have no record to expire with it.
ADD_WEBHOOK_ATTEMPT = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
return redis.call('rpush', KEYS[2], ARGV[1])
"""

# KEYS: job. ARGV: owner, frames done, frames in all.
PROGRESS = """
local fields = redis.call('hmget', KEYS[1], 'status', 'owner')
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'frames_done', ARGV[2], 'frames_total', ARGV[3])
return 1
"""

# KEYS: job, queued, finished. ARGV: now, id. A video queued again to be stitched (its
# segments ran) is not canceled: its frames went through the model.
CANCEL = """
if redis.call('hget', KEYS[1], 'status') ~= 'queued' then return 0 end
if (tonumber(redis.call('hget', KEYS[1], 'segments')) or 0) > 0 then return 0 end
redis.call('hset', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
redis.call('zrem', KEYS[2], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

# KEYS: job, queued, turns. ARGV: expected message_id, new message_id. A queued job whose
# message was lost gets a new one (the caller enqueues it); the old, if it ever shows, is
# stale, and its place among the turns (PLACE) goes.
REISSUE = """
if redis.call('hget', KEYS[1], 'status') ~= 'queued' then return 0 end
if redis.call('hget', KEYS[1], 'msg') ~= ARGV[1] then return 0 end
local rmid = redis.call('hget', KEYS[1], 'rmid')
if rmid and rmid ~= '' then redis.call('zrem', KEYS[3], rmid) end
redis.call('hset', KEYS[1], 'msg', ARGV[2], 'rmid', '')
return 1
"""

# KEYS: job, dramatiq's list of the queue's messages, turns, clock, placements' count.
# ARGV: message_id, redis message id (just pushed at the list's tail), job id, prefix of the
# keys' queued turns, job key prefix, how long a key's set outlives its last placement (ms).
# Turns between keys, as the embedded store gives them (bgsvc.jobs.sqlite.turns): a job
# without one takes one past the later of the clock (the latest turn claimed) and the last
# turn among its key's queued jobs; a job that has one (queued again by a shutdown, or by
# the reconciler after a lost message) keeps it. Each key's queued turns are a sorted set of
# job ids; entries of jobs no longer queued (canceled, expired, deleted) are dropped when
# found at its top, those below the clock (which no longer decide a turn) at each
# placement, and the set itself once every job in it has expired. The message then moves
# from the tail to just before the first message of a later turn, so dramatiq's FIFO fetch
# hands out the lowest turn first. ``turns`` holds each placed message (its redis message
# id) at turn x 2^20 + the placement's number, so the messages of one turn sort in the
# order they were placed, which is their order in the list, until the message is claimed
# or dropped (RedisJobs.claim); one no longer in the list is dropped when met. (A message a
# runner fetched and died before claiming comes back at the tail with its entry, and a job
# placed at an earlier turn goes before it there. The window is one call: a runner claims
# what it fetches in its next one.) Notes where the message is (rmid), for the reconciler,
# unless the job moved on to another message meanwhile; such a stale message stays where
# it is.
PLACE = """
if redis.call('hget', KEYS[1], 'msg') ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'rmid', ARGV[2])
local key = redis.call('hget', KEYS[1], 'tenant') or ''
local mine = ARGV[4] .. (key == '' and 'keyless' or ('key:' .. key))
local turn = tonumber(redis.call('hget', KEYS[1], 'turn'))
if not turn then
    local last = 0
    while true do
        local top = redis.call('zrevrange', mine, 0, 0, 'WITHSCORES')
        if #top == 0 then break end
        if redis.call('hget', ARGV[5] .. top[1], 'status') == 'queued' then
            last = tonumber(top[2])
            break
        end
        redis.call('zrem', mine, top[1])
    end
    turn = math.max(tonumber(redis.call('get', KEYS[4])) or 0, last) + 1
    redis.call('hset', KEYS[1], 'turn', string.format('%.0f', turn))
end
local clock = tonumber(redis.call('get', KEYS[4])) or 0
redis.call('zremrangebyscore', mine, '-inf', '(' .. string.format('%.0f', clock))
redis.call('zadd', mine, string.format('%.0f', turn), ARGV[3])
redis.call('pexpire', mine, ARGV[6])
local later_turns = string.format('%.0f', (turn + 1) * 1048576)
while true do
    local later = redis.call('zrangebyscore', KEYS[3], later_turns, '+inf', 'LIMIT', 0, 1)[1]
    if not later then break end
    if redis.call('lrem', KEYS[2], -1, ARGV[2]) == 0 then return 1 end
    if redis.call('linsert', KEYS[2], 'BEFORE', later, ARGV[2]) > 0 then break end
    redis.call('rpush', KEYS[2], ARGV[2])
    redis.call('zrem', KEYS[3], later)
end
local placed = redis.call('incr', KEYS[5]) % 1048576
redis.call('zadd', KEYS[3], string.format('%.0f', turn * 1048576 + placed), ARGV[2])
return 1
"""

# KEYS: finished, queued, expired, waiting. ARGV: before, limit, job key prefix. Marks
# expired the jobs finished before ``before`` and those still queued, or waiting on their
# segments, since then; returns their ids.
EXPIRE = """
local done = {}
local function expire(index, id, score)
    local key = ARGV[3] .. id
    local status = redis.call('hget', key, 'status')
    redis.call('zrem', index, id)
    if status and status ~= 'running' then
        redis.call('hset', key, 'status', 'expired')
        redis.call('zadd', KEYS[3], score, id)
        table.insert(done, id)
    end
end
for _, index in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do
    local found = redis.call('zrangebyscore', index, '-inf', '(' .. ARGV[1], 'withscores',
        'limit', 0, tonumber(ARGV[2]))
    for i = 1, #found, 2 do expire(index, found[i], found[i + 1]) end
end
return done
"""

# KEYS: batch. ARGV: now, job key prefix, then the items' job ids. Marks the batch completed
# when every item is final (a purged one counts) and nobody did yet: 1 for that one caller.
COMPLETE_BATCH = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if redis.call('hget', KEYS[1], 'completed_at') then return 0 end
for i = 3, #ARGV do
    local status = redis.call('hget', ARGV[2] .. ARGV[i], 'status')
    if status == 'queued' or status == 'running' or status == 'waiting' then return 0 end
end
redis.call('hset', KEYS[1], 'completed_at', ARGV[1])
return 1
"""

# KEYS: job, queued, running. ARGV: hb, new message_id, id. A running job of a dead runner
# whose message is gone, or of a live one that lost track of it, queued again.
RESCUE = """
local fields = redis.call('hmget', KEYS[1], 'status', 'hb', 'created_at')
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'status', 'queued', 'owner', '', 'hb', '', 'msg', ARGV[2],
    'rmid', '')
redis.call('zrem', KEYS[3], ARGV[3])
redis.call('zadd', KEYS[2], fields[3], ARGV[3])
return 1
"""
