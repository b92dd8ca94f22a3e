"""Redis key layout and the Lua scripts that keep job state consistent across processes.

Keys (``p`` = the deployment prefix, default ``ponder``):

- ``p:q:high`` / ``p:q:normal`` / ``p:q:low`` — job queues (Streams, consumer group ``workers``);
  an entry is ``{job: <id>}``, acknowledged and deleted when the job ends. ``p:q:solo`` holds
  jobs isolated after their workers died with them (see ``CLAIM``).
- ``p:job:<id>`` — Hash: state, request (SolveRequest bytes), created/started/finished times,
  attempt (fencing token), lost / lost_alone / alone / solo (see ``CLAIM``), seq (last event number), worker, result (Final bytes),
  error (Error bytes), cancel flag, queue and entry of its queue message, owner (the token
  name that created it; empty without authentication).
- ``p:job:<id>:events`` — Stream of the job's events, fields ``seq`` and ``data``
  (SolveEvent bytes without seq/event_id, which the relay fills in).
- ``p:req:<owner>:<request_id>`` — the job created for a client's idempotency key (owner ``-``
  without authentication).
- ``p:workers`` — Hash worker id → WorkerInfo bytes (heartbeat).

Every event a worker publishes goes through ``PUBLISH``, which checks the worker's attempt
number against the job's: a worker whose lease expired and whose job was re-run elsewhere can
no longer write, so a client sees exactly one final result.
"""

from __future__ import annotations

from dataclasses import dataclass

PRIORITIES = ("high", "normal", "low")
SOLO = "solo"  # the queue of isolated jobs (see CLAIM), read only by a worker that runs nothing else
GROUP = "workers"
TERMINAL = ("done", "failed", "cancelled")
DEFAULT_PREFIX = "ponder"  # every key starts with it; one prefix per deployment sharing a Redis


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def queue(self, priority: str) -> str:
        return f"{self.prefix}:q:{priority}"

    @property
    def queues(self) -> list[str]:
        """The priority queues, highest first (the solo queue is apart: :attr:`solo`)."""
        return [self.queue(p) for p in PRIORITIES]

    @property
    def solo(self) -> str:
        return self.queue(SOLO)

    @property
    def solo_reservation(self) -> str:
        """The worker that drains its batch to take the next isolated job."""
        return f"{self.prefix}:solo-reserved"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def request(self, request_id: str, owner: str = "") -> str:
        """The idempotency key of ``request_id``, scoped to its owner (the caller's token name;
        ``-`` without authentication): two callers may use the same request id."""
        return f"{self.prefix}:req:{owner or '-'}:{request_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"


def priority_name(priority: int) -> str:
    return "high" if priority > 0 else "low" if priority < 0 else "normal"


# KEYS: job, events, queue, request-key (or "")
# ARGV: job_id, request, now, request_id, ttl, queued-event, max-queued (0: no cap), owner,
#       fingerprint (of the request, deadline aside), job key prefix
# Returns {1, job_id} (created), {0, job_id} (the request_id's existing job), {-2, job_id} (the
# request_id belongs to a job of a different request) or {-1, waiting} (the queue holds
# max-queued jobs that no worker has taken yet). Nothing is written unless created.
SUBMIT = """
if ARGV[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    local fp = redis.call('HGET', ARGV[10] .. existing, 'fingerprint')
    if fp and fp ~= ARGV[9] then return {-2, existing} end
    return {0, existing}
  end
end
local cap = tonumber(ARGV[7])
if cap > 0 then
  local waiting = redis.call('XLEN', KEYS[3])
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[3], 'workers')
  if ok then waiting = waiting - pending[1] end
  if waiting >= cap then return {-1, tostring(waiting)} end
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[5]))
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'request', ARGV[2], 'created', ARGV[3],
           'attempt', 0, 'seq', 1, 'queue', KEYS[3], 'request_id', ARGV[4], 'owner', ARGV[8],
           'fingerprint', ARGV[9])
redis.call('XADD', KEYS[2], '*', 'seq', 1, 'data', ARGV[6])
local entry = redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'entry', entry)
return {1, ARGV[1]}
"""

# KEYS: job, events, the entry's queue, the solo queue
# ARGV: worker, now, reclaimed (1: taken over from a worker that stopped renewing its lease),
#       alone (1: this worker runs the job alone), isolate_after, max_solo_losses,
#       error event, error bytes, ttl, entry id, job id
# Returns {attempt, 'running'} (run it), {0, state} (do not run: terminal or missing; a job
# failed here has its error event written) or {-1, 'isolated'} (moved to the solo queue,
# the old entry acknowledged and deleted: a worker that runs nothing else will take it).
# A job lost with a dying worker is not charged an attempt: it may have been an innocent
# bystander of another job's crash. After `isolate_after` losses it runs alone, and a job that
# is lost `max_solo_losses` times while running alone is the one killing workers: it fails.
CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, 'missing'} end
if state == 'done' or state == 'failed' or state == 'cancelled' then return {0, state} end
if ARGV[3] == '1' and state == 'running' then
  local lost = redis.call('HINCRBY', KEYS[1], 'lost', 1)
  if redis.call('HGET', KEYS[1], 'alone') == '1' then
    local solo_lost = redis.call('HINCRBY', KEYS[1], 'lost_alone', 1)
    if solo_lost >= tonumber(ARGV[6]) then
      local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
      redis.call('XADD', KEYS[2], '*', 'seq', seq, 'data', ARGV[7])
      redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[8], 'finished', ARGV[2])
      local ttl = tonumber(ARGV[9])
      if ttl > 0 then
        redis.call('EXPIRE', KEYS[1], ttl)
        redis.call('EXPIRE', KEYS[2], ttl)
      end
      return {0, 'failed'}
    end
  end
  if lost >= tonumber(ARGV[5]) and KEYS[3] ~= KEYS[4] then
    local entry = redis.call('XADD', KEYS[4], '*', 'job', ARGV[11])
    redis.call('XACK', KEYS[3], 'workers', ARGV[10])
    redis.call('XDEL', KEYS[3], ARGV[10])
    redis.call('HSET', KEYS[1], 'state', 'queued', 'queue', KEYS[4], 'entry', entry, 'solo', '1')
    redis.call('HINCRBY', KEYS[1], 'attempt', 1)  -- fences the lost attempt's worker, if it wakes
    return {-1, 'isolated'}
  end
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started', ARGV[2], 'alone', ARGV[4])
return {attempt, 'running'}
"""

# KEYS: job, queue   ARGV: attempt, group, consumer, entry, idle_ms, new owner
# A draining worker hands back a job it could not finish: the attempt is bumped (fencing its
# stale writes), the job is 'queued' again (so the next claim does not count a loss), and its
# entry moves to a placeholder consumer, idle for a whole lease: the next reclaim by any worker
# takes it at once, and the leaving worker's own lease renewals no longer touch it.
RELEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'queued')
local p = redis.call('XPENDING', KEYS[2], ARGV[2], ARGV[4], ARGV[4], 1, ARGV[3])
if #p == 1 then
  redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[6], 0, ARGV[4], 'IDLE', ARGV[5], 'JUSTID')
end
return 1
"""

# KEYS: job, events   ARGV: attempt, data, terminal-state ('' if none), result-field, result, now, ttl
# Returns the event's seq, or -1 when this worker no longer owns the job.
PUBLISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'done' or state == 'failed' or state == 'cancelled' then return -1 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return -1 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], '*', 'seq', seq, 'data', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[3], ARGV[4], ARGV[5], 'finished', ARGV[6])
  local ttl = tonumber(ARGV[7])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
  end
end
return seq
"""

# KEYS: job, events   ARGV: error-event data, error bytes, now, ttl
# A queued job ends here (its terminal event written atomically); a running one gets the cancel
# flag its worker polls. Returns the state after the call.
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'queued' then
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], '*', 'seq', seq, 'data', ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancel', '1', 'error', ARGV[2], 'finished', ARGV[3])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
  end
  return 'cancelled'
end
if state == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return state
"""

# KEYS: queue   ARGV: group, consumer, entry ids...
# Resets the idle time of entries this consumer still owns (never steals one that was
# reclaimed by another worker after this one's lease ran out). Returns how many it renewed.
RENEW = """
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""
