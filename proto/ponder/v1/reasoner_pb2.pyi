from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SolveRequest(_message.Message):
    __slots__ = ("question", "strategy", "budget", "options", "request_id", "priority", "model", "timeout_s")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    question: str
    strategy: str
    budget: Budget
    options: SearchOptions
    request_id: str
    priority: int
    model: str
    timeout_s: float
    def __init__(self, question: _Optional[str] = ..., strategy: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ..., request_id: _Optional[str] = ..., priority: _Optional[int] = ..., model: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("generations", "max_tokens", "max_flops", "mode", "min_generations", "max_generations")
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOPS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MIN_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    generations: int
    max_tokens: int
    max_flops: float
    mode: str
    min_generations: int
    max_generations: int
    def __init__(self, generations: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_flops: _Optional[float] = ..., mode: _Optional[str] = ..., min_generations: _Optional[int] = ..., max_generations: _Optional[int] = ...) -> None: ...

class SearchOptions(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "beam_width", "lookahead", "max_steps", "max_step_tokens", "seed", "aggregation", "selection", "sequential_ratio")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    BEAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    SEQUENTIAL_RATIO_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    beam_width: int
    lookahead: int
    max_steps: int
    max_step_tokens: int
    seed: int
    aggregation: str
    selection: str
    sequential_ratio: float
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., beam_width: _Optional[int] = ..., lookahead: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_step_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., aggregation: _Optional[str] = ..., selection: _Optional[str] = ..., sequential_ratio: _Optional[float] = ...) -> None: ...

class SolveEvent(_message.Message):
    __slots__ = ("job_id", "seq", "event_id", "time", "queued", "started", "step", "candidate", "progress", "final", "error", "decision")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    event_id: str
    time: float
    queued: Queued
    started: Started
    step: Step
    candidate: Candidate
    progress: Progress
    final: Final
    error: Error
    decision: Decision
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., event_id: _Optional[str] = ..., time: _Optional[float] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., step: _Optional[_Union[Step, _Mapping]] = ..., candidate: _Optional[_Union[Candidate, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("kind", "reason", "candidates", "spent", "allowance", "nominal", "vote_share", "margin", "stable", "best_score", "mean_score", "difficulty_bin", "plan", "leader")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    ALLOWANCE_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_FIELD_NUMBER: _ClassVar[int]
    VOTE_SHARE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_BIN_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    kind: str
    reason: str
    candidates: int
    spent: int
    allowance: int
    nominal: int
    vote_share: float
    margin: float
    stable: int
    best_score: float
    mean_score: float
    difficulty_bin: int
    plan: str
    leader: str
    def __init__(self, kind: _Optional[str] = ..., reason: _Optional[str] = ..., candidates: _Optional[int] = ..., spent: _Optional[int] = ..., allowance: _Optional[int] = ..., nominal: _Optional[int] = ..., vote_share: _Optional[float] = ..., margin: _Optional[float] = ..., stable: _Optional[int] = ..., best_score: _Optional[float] = ..., mean_score: _Optional[float] = ..., difficulty_bin: _Optional[int] = ..., plan: _Optional[str] = ..., leader: _Optional[str] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("queue_depth", "request_id")
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    request_id: str
    def __init__(self, queue_depth: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("strategy", "plan", "worker", "attempt", "model", "generations", "verifier", "restart_reason")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    RESTART_REASON_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    plan: str
    worker: str
    attempt: int
    model: str
    generations: int
    verifier: str
    restart_reason: str
    def __init__(self, strategy: _Optional[str] = ..., plan: _Optional[str] = ..., worker: _Optional[str] = ..., attempt: _Optional[int] = ..., model: _Optional[str] = ..., generations: _Optional[int] = ..., verifier: _Optional[str] = ..., restart_reason: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("node_id", "parent_id", "depth", "text", "score", "aggregate", "finished")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    parent_id: int
    depth: int
    text: str
    score: float
    aggregate: float
    finished: bool
    def __init__(self, node_id: _Optional[int] = ..., parent_id: _Optional[int] = ..., depth: _Optional[int] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., aggregate: _Optional[float] = ..., finished: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("node_id", "solution", "answer", "score", "attempt_index")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SOLUTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    solution: str
    answer: str
    score: float
    attempt_index: int
    def __init__(self, node_id: _Optional[int] = ..., solution: _Optional[str] = ..., answer: _Optional[str] = ..., score: _Optional[float] = ..., attempt_index: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("generations", "prompt_tokens", "decode_tokens", "prm_tokens", "flops", "flops_unshared", "tokens_saved", "steps")
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_UNSHARED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SAVED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    generations: int
    prompt_tokens: int
    decode_tokens: int
    prm_tokens: int
    flops: float
    flops_unshared: float
    tokens_saved: int
    steps: int
    def __init__(self, generations: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., decode_tokens: _Optional[int] = ..., prm_tokens: _Optional[int] = ..., flops: _Optional[float] = ..., flops_unshared: _Optional[float] = ..., tokens_saved: _Optional[int] = ..., steps: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("usage", "best_answer", "vote_share")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    BEST_ANSWER_FIELD_NUMBER: _ClassVar[int]
    VOTE_SHARE_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    best_answer: str
    vote_share: float
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., best_answer: _Optional[str] = ..., vote_share: _Optional[float] = ...) -> None: ...

class AnswerVotes(_message.Message):
    __slots__ = ("answer", "count", "score")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    answer: str
    count: int
    score: float
    def __init__(self, answer: _Optional[str] = ..., count: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("answer", "solution", "votes", "usage", "latency_s", "queue_s", "strategy", "stop_reason", "nominal_generations", "low_confidence", "difficulty_bin")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SOLUTION_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    LOW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_BIN_FIELD_NUMBER: _ClassVar[int]
    answer: str
    solution: str
    votes: _containers.RepeatedCompositeFieldContainer[AnswerVotes]
    usage: Usage
    latency_s: float
    queue_s: float
    strategy: str
    stop_reason: str
    nominal_generations: int
    low_confidence: bool
    difficulty_bin: int
    def __init__(self, answer: _Optional[str] = ..., solution: _Optional[str] = ..., votes: _Optional[_Iterable[_Union[AnswerVotes, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., latency_s: _Optional[float] = ..., queue_s: _Optional[float] = ..., strategy: _Optional[str] = ..., stop_reason: _Optional[str] = ..., nominal_generations: _Optional[int] = ..., low_confidence: _Optional[bool] = ..., difficulty_bin: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("job_id", "created")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    created: bool
    def __init__(self, job_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "after_event_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_event_id: str
    def __init__(self, job_id: _Optional[str] = ..., after_event_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("job_id", "state")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ResultResponse(_message.Message):
    __slots__ = ("job_id", "state", "final", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    final: Final
    error: Error
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "host", "models", "active_jobs", "capacity", "last_seen", "strategies", "verifier", "plan", "context_tokens", "max_token_chars", "device", "dtype")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_JOBS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKEN_CHARS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    host: str
    models: _containers.RepeatedScalarFieldContainer[str]
    active_jobs: int
    capacity: int
    last_seen: float
    strategies: _containers.RepeatedScalarFieldContainer[str]
    verifier: str
    plan: str
    context_tokens: int
    max_token_chars: int
    device: str
    dtype: str
    def __init__(self, worker_id: _Optional[str] = ..., host: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., active_jobs: _Optional[int] = ..., capacity: _Optional[int] = ..., last_seen: _Optional[float] = ..., strategies: _Optional[_Iterable[str]] = ..., verifier: _Optional[str] = ..., plan: _Optional[str] = ..., context_tokens: _Optional[int] = ..., max_token_chars: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("version", "models", "strategies", "workers_alive", "queue_depth", "jobs_running", "workers", "max_generations", "max_question_chars", "placements")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    JOBS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    version: str
    models: _containers.RepeatedScalarFieldContainer[str]
    strategies: _containers.RepeatedScalarFieldContainer[str]
    workers_alive: int
    queue_depth: int
    jobs_running: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    max_generations: int
    max_question_chars: int
    placements: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., strategies: _Optional[_Iterable[str]] = ..., workers_alive: _Optional[int] = ..., queue_depth: _Optional[int] = ..., jobs_running: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., max_generations: _Optional[int] = ..., max_question_chars: _Optional[int] = ..., placements: _Optional[_Iterable[str]] = ...) -> None: ...
