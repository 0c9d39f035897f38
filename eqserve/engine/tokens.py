"""The token engine: continuous batching over sequences *and* recurrence steps of a looped LM.

A row is a sequence at its current token. Every batch step runs one core step for each live row,
whatever its token and inner step; a row whose exit rule (or per-token budget) stops it emits its
token through the coda and head, and starts its next token's inner loop at the next step, while its
batch-mates go on. A newcomer joins at the next step with its prompt, whose loop is the first new
token's, as in the reference `generate`: the whole prompt advances one core step per batch step,
packed into the same model call as the decoding rows, until the request's rule or budget stops it,
so a long prompt neither holds up the batch nor runs past its rule. The `static` policy is the
baseline the reference `generate` gives: a batch is admitted together, every token (the first one
being the prompt's loop) waits until the batch's slowest row has exited, and the answers go out
together. A token or prompt that has exited is computed while it waits, as the reference computes it
(it repeats its last step: the same cost, the same bits); a finished row waits uncomputed, which
makes the baseline a little faster than the reference.

Its outside is `Worker`'s, as `eqserve.engine.core.Engine`'s is, so the server runs it like any engine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from eqserve.engine import exits
from eqserve.engine.completion import CompletionJob, CompletionResult, FinishReason, TokenEvent
from eqserve.engine.errors import ModelStepError
from eqserve.engine.observer import NullObserver
from eqserve.engine.scheduler import POLICIES, Row, Scheduler
from eqserve.engine.worker import Worker
from eqserve.kernels import invariant
from eqserve.models.looped import LoopedLM

log = logging.getLogger(__name__)


@dataclass
class Seq:
    """A sequence in the batch: its cache, current token's state and inner step, what it has said."""

    job: CompletionJob
    row: Row
    cache: Any
    generator: torch.Generator | None
    e: torch.Tensor = field(init=False)
    s: torch.Tensor | None = None
    s_in: torch.Tensor = field(init=False)
    """The input of the current token's last core step (a static batch's idle row repeats it)."""
    j: int = 0
    """Inner steps the current token has run."""
    value: float | None = None
    """The current token's last exit value."""
    prev: torch.Tensor | None = None
    """The previous check's log-distribution (entropy-diff, kl, argmax-stability)."""
    stable: int = 0
    """Checks in a row the top token has not changed (argmax-stability)."""
    exited: bool = False
    """The current token's loop has stopped; under `static` it waits for the batch's slowest."""
    ruled: bool = False
    """The exit rule (not the budget) stopped the current token's loop."""
    done: CompletionResult | None = None
    """Under `static`, the answer held until the batch ends."""
    filling: Any = None
    """The prompt's loop, the first new token's, while it runs: one core step of the whole prompt per
    batch step (the model's `prefill_start` state); None once the first token is out."""
    fill_s: torch.Tensor | None = None
    """The prompt's latent states after its loop's last step (latent-diff compares them; the last
    position's is the next token's warm start)."""
    tokens: list[int] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    exit_values: list[float | None] = field(default_factory=list)
    by_rule: list[bool] = field(default_factory=list)
    text: str = ""

    def start_token(self, e: torch.Tensor, s: torch.Tensor) -> None:
        """Begin a token's inner loop from injection `e` and state `s`."""
        self.e, self.s, self.j, self.value, self.prev, self.stable = e, s, 0, None, None, 0
        self.exited = self.ruled = False

    def decide(self, passed: bool) -> None:
        """After a step: the loop (a token's or the prompt's) stops by its rule once `passed` and past
        `min_steps`, and always at its budget."""
        rule = self.job.rule
        self.ruled = passed and self.j >= rule.min_steps
        self.exited = self.ruled or self.j >= rule.max_iters


class TokenEngine(Worker):
    """The batching worker of one looped LM, fed by `submit` from any thread."""

    def __init__(
        self,
        model: LoopedLM,
        *,
        max_batch_rows: int = 64,
        max_queue: int = 256,
        batching: str = "continuous",
        torch_threads: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = model.name
        self.torch_threads = torch_threads
        self.batching = batching
        self.policy = POLICIES[batching]()
        self.scheduler = Scheduler(model.name, max_batch_rows, max_queue, self.policy)
        self.observer: Any = NullObserver()
        self.seqs: list[Seq] = []
        self.last_run_rows = 0

    # -- the worker ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        with torch.inference_mode(), invariant.mode(True):
            while (jobs := self.scheduler.wait_and_take()) is not None:
                self._busy_since = time.monotonic()
                try:
                    if jobs:
                        self._admit(jobs)
                    if self.seqs:
                        self._step()
                except Exception as exc:  # the model's fault: fail the batch's completions, keep serving
                    log.exception("model %s failed in its step", self.name)
                    self._fail_all(ModelStepError(self.name, exc))
                self._busy_since = None
            for q in self.seqs:
                self._answer(q, "cancelled", "cancelled")
            for job in self.scheduler.drain():
                self._answer(self._seq(job, None), "cancelled", "cancelled")
            self._reindex([])

    def _seq(self, job: CompletionJob, cache: Any) -> Seq:
        gen = torch.Generator().manual_seed(job.seed) if job.temperature > 0 else None
        return Seq(job, Row(job, admitted=time.monotonic()), cache, gen)  # type: ignore[arg-type]

    def _admit(self, jobs: list[CompletionJob]) -> None:
        """Each newcomer begins its prompt's loop, the first new token's: one core step of the whole
        prompt per batch step beside the other rows, until its exit rule or budget."""
        now = time.monotonic()
        admitted: list[Seq] = []
        for job in jobs:
            q = self._seq(job, None)
            self.observer.admitted(job, now - job.submitted)
            if job.cancelled or now >= job.deadline:
                self._answer(q, "cancelled" if job.cancelled else "deadline", "cancelled")
                continue
            q.cache = self.model.new_cache()
            try:
                q.filling = self.model.prefill_start(job.prompt, q.cache, job.rule.max_iters)
            except Exception as exc:  # the model's fault on this prompt: fail it alone, admit the rest
                log.exception("model %s failed to start a prompt", self.name)
                self._fail(q, ModelStepError(self.name, exc))
                continue
            admitted.append(q)
        if admitted:
            self._reindex(self.seqs + admitted)

    def _reindex(self, seqs: list[Seq]) -> None:
        self.seqs = seqs
        self.scheduler.reset([q.row for q in seqs])

    def _step(self) -> None:
        """One core step for every live row; then the rows whose loop stopped emit their tokens."""
        start = time.perf_counter()
        live = [q for q in self.seqs if not q.exited and q.done is None]
        decoding = [q for q in live if q.filling is None]
        # the baseline's rows that wait for the slowest are computed as the reference computes them
        waiting = [q for q in self.seqs if q.exited and q.done is None] if self.policy.holds else []
        held = [q for q in waiting if q.filling is None] if decoding else []
        filling = [q for q in live if q.filling is not None]
        repeating = [q for q in waiting if q.filling is not None]
        if decoding or filling or repeating:
            self._advance(decoding, held, filling, repeating)
        self.scheduler.steps += 1
        now = time.monotonic()
        for q in live:
            job = q.job
            if job.cancelled or now >= job.deadline:
                self._finish(q, "cancelled" if job.cancelled else "deadline", "cancelled")
        ready = [q for q in self.seqs if q.exited and q.done is None]
        if self.policy.holds and any(not q.exited and q.done is None for q in self.seqs):
            ready = []  # the batch waits for its slowest row
        if ready:
            self._emit(ready)
        if self.policy.holds:
            if all(q.done is not None for q in self.seqs):
                for q in self.seqs:
                    self._deliver(q)
                self._reindex([])
        else:
            kept = [q for q in self.seqs if q.done is None]
            if len(kept) != len(self.seqs):
                self._reindex(kept)
        self.last_run_rows = len(live)
        self.observer.ran(time.perf_counter() - start, 1, len(live), len(live))

    def _advance(self, live: list[Seq], held: list[Seq], filling: list[Seq], repeating: list[Seq]) -> None:
        """One batch step, one model call: a core step of the `live` decoding rows and a prefill step
        of the `filling` prompts; then their exit values, marking the rows whose loop stops. The `held`
        rows and `repeating` prompts (static batching) repeat their last step, which writes their
        caches the same bits again, so they cost what the reference's idle rows cost and change nothing."""
        rows, prompts = live + held, filling + repeating
        s = torch.cat([q.s for q in live] + [q.s_in for q in held]) if rows else None
        e = torch.cat([q.e for q in rows]) if rows else None
        steps = [q.j for q in live] + [q.j - 1 for q in held]
        new, news = self.model.batch_step(
            s, e, [q.cache for q in rows], steps,
            [q.filling for q in prompts], [False] * len(filling) + [True] * len(repeating),
        )  # fmt: skip
        if live:
            assert s is not None and new is not None
            self._judge_tokens(live, s[: len(live)], new[: len(live)])
        if filling:
            self._judge_prompts(filling, news[: len(filling)])

    def _judge_tokens(self, live: list[Seq], s: torch.Tensor, new: torch.Tensor) -> None:
        """The decoding rows' exit values from their states before (`s`) and after (`new`) the step."""
        model = self.model
        diffs: list[float] | None = None
        peek = [i for i, q in enumerate(live) if q.job.rule.criterion in exits.NEEDS_LOGITS and _checks(q)]
        logp = None
        if peek:
            logp = exits.log_probs(model.logits(new[peek], [live[i].cache for i in peek], False))
        if any(q.job.rule.criterion == "latent-diff" for q in live):
            diffs = exits.latent_diff(s, new).tolist()
        for i, q in enumerate(live):
            q.s_in, q.s = s[i : i + 1], new[i : i + 1]
            q.j += 1
            if q.job.rule.criterion == "latent-diff":
                q.value = diffs[i]  # type: ignore[index]
        if logp is not None:
            self._judge_distributions([live[i] for i in peek], logp)
        for q in live:
            q.decide(_passed(q))

    def _judge_prompts(self, rows: list[Seq], news: list[torch.Tensor | None]) -> None:
        """The prompts' exit values after a step of their loop, judged as the reference judges its
        prefill: latent-diff on every position's state (the mean of their relative moves), the
        distribution criteria on the last position's next-token distribution."""
        for q, new in zip(rows, news, strict=True):
            q.j += 1
            if q.job.rule.criterion == "latent-diff" and new is not None and q.fill_s is not None:
                q.value = float(exits.latent_diff(q.fill_s, new).mean())
            q.fill_s = new
        peek = [q for q in rows if q.job.rule.criterion in exits.NEEDS_LOGITS and _checks(q, 1)]
        if peek:
            logp = exits.log_probs(self.model.prefill_logits([q.filling for q in peek]))
            self._judge_distributions(peek, logp)
        for q in rows:
            q.decide(_passed(q))

    @staticmethod
    def _judge_distributions(rows: list[Seq], logp: torch.Tensor) -> None:
        """The distribution criteria's values from this check and each row's previous one."""
        ent = exits.entropy(logp).tolist()
        top = logp.argmax(dim=-1).tolist()
        for i, q in enumerate(rows):
            criterion, prev = q.job.rule.criterion, q.prev
            if criterion == "kl" and prev is not None:
                q.value = float(exits.kl(prev, logp[i : i + 1]))
            elif criterion == "entropy-diff" and prev is not None:
                q.value = abs(ent[i] - float(exits.entropy(prev)))
            elif criterion == "argmax-stability":
                same = prev is not None and int(prev.argmax()) == top[i]
                q.stable = q.stable + 1 if same else 0
                q.value = float(q.stable)
            q.prev = logp[i : i + 1]

    def _emit(self, rows: list[Seq]) -> None:
        """Each row's token from its state (a prompt's, the first new token, from its last position);
        the rows that go on start their next token."""
        model = self.model
        decoding = [q for q in rows if q.filling is None]
        logits = {}
        if decoding:
            out = model.logits(torch.cat([q.s for q in decoding]), [q.cache for q in decoding], True)
            logits = {id(q): out[i] for i, q in enumerate(decoding)}
        for q in rows:
            if q.filling is not None:
                logits[id(q)] = model.prefill_finish(q.filling, q.j, q.cache)
                q.s = q.fill_s[-1:] if q.fill_s is not None else None  # the warm start of the next token
                q.filling = q.fill_s = None
        going: list[Seq] = []
        for q in rows:
            token = self._sample(q, logits[id(q)])
            job = q.job
            q.tokens.append(token)
            q.iterations.append(q.j)
            q.exit_values.append(q.value)
            q.by_rule.append(q.ruled)
            before = q.text
            if token != model.eos:
                q.text += model.decode([token])
            if len(q.tokens) == 1:
                self.observer.first_iterate(job, time.monotonic() - job.submitted)
            self.observer.token(job, q.j, q.ruled)
            reason = self._finished(q, token)
            if job.watch is not None:
                shown = _cut(q.text, job.stop)[len(before) :]
                event = TokenEvent(len(q.tokens) - 1, token, shown, q.j, q.exit_values[-1], q.by_rule[-1])
                job.watch.push(event)
            if reason is not None:
                self._finish(q, "ok", reason)
            else:
                going.append(q)
        if going:
            e = model.embed([q.tokens[-1] for q in going], [q.cache for q in going])
            s = model.init_state(e)
            for i, q in enumerate(going):
                warm = q.job.warm_start and q.s is not None
                q.start_token(e[i : i + 1], q.s if warm else s[i : i + 1])  # type: ignore[arg-type]

    @staticmethod
    def _sample(q: Seq, logits: torch.Tensor) -> int:
        """Greedy at temperature 0, else a draw from the completion's own generator."""
        if q.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / q.job.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=q.generator))

    def _finished(self, q: Seq, token: int) -> FinishReason | None:
        """Why the completion ends after `token`, or None."""
        job = q.job
        if token == self.model.eos or any(s in q.text for s in job.stop):
            return "stop"
        if len(q.tokens) >= job.max_tokens or len(job.prompt) + len(q.tokens) >= self.model.max_context:
            return "length"
        return None

    def _finish(self, q: Seq, status: str, reason: FinishReason) -> None:
        """The completion ends: answered now, or (static) when its batch ends."""
        q.done = self._result(q, status, reason)
        if not self.policy.holds:
            self._deliver(q)

    def _result(self, q: Seq, status: str, reason: FinishReason) -> CompletionResult:
        job = q.job
        tokens = q.tokens[:-1] if q.tokens[-1:] == [self.model.eos] else q.tokens
        return CompletionResult(
            id=job.id,
            status=status,
            finish_reason=reason,
            text=_cut(q.text, job.stop),
            tokens=list(tokens),
            iterations=list(q.iterations),
            exit_values=list(q.exit_values),
            exited=list(q.by_rule),
            prompt_tokens=len(job.prompt),
            queue_ms=(q.row.admitted - job.submitted) * 1e3,
            solve_ms=0.0,
        )

    def _deliver(self, q: Seq) -> None:
        result = q.done
        assert result is not None
        now = time.monotonic()
        result.solve_ms = (now - q.row.admitted) * 1e3
        self.scheduler.throughput.record(now)
        self.observer.finished(q.job, result)
        if not q.job.future.done():
            q.job.future.set_result(result)

    def _answer(self, q: Seq, status: str, reason: FinishReason) -> None:
        """Answer a completion that is not (or no longer) stepping."""
        q.done = self._result(q, status, reason)
        self._deliver(q)

    def _fail(self, q: Seq, error: BaseException) -> None:
        """`q`'s completion fails with `error` (counted as an error)."""
        if not q.job.future.done():
            q.job.future.set_exception(error)
            self.observer.finished(q.job, self._result(q, "error", "cancelled"))

    def _fail_all(self, error: BaseException) -> None:
        """The model failed in its step: every completion in the batch fails with `error`."""
        for q in self.seqs:
            self._fail(q, error)
        self._reindex([])


def _checks(q: Seq, ran: int = 0) -> bool:
    """Whether the inner step now running (`ran` = 0) or just run (1) looks at the distribution."""
    return (q.j + 1 - ran) % q.job.rule.check_every == 0


def _passed(q: Seq) -> bool:
    """Whether the loop's last exit value passes its rule's threshold."""
    rule, value = q.job.rule, q.value
    if rule.criterion == "none" or value is None:
        return False
    return value >= rule.threshold if rule.criterion == "argmax-stability" else value < rule.threshold


def _cut(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to its first stop string (OpenAI's completions leave the stop string out)."""
    at = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:at]
