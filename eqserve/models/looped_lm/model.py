"""looped-lm: Huginn's recurrent-depth transformer (prelude, core iterated on a latent state, coda, head).

The module's parameter names are Huginn's (`transformer.wte`, `transformer.prelude.N`, `transformer.adapter`,
`transformer.core_block.N`, `transformer.coda.N`, `transformer.ln_f`, `lm_head`), so a checkpoint in its
layout loads (`checkpoint.py`). `forward` is the whole-sequence pass (training, prefill, the reference);
the `LoopedLM` methods are the token-by-token pass the token engine drives, one row per sequence.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from eqserve.models.base import EvalReport, InputError
from eqserve.models.looped import ExitRule, LoopedLM
from eqserve.models.looped_lm.cache import LoopedCache
from eqserve.models.looped_lm.config import LoopedConfig
from eqserve.models.looped_lm.layers import KV, RMSNorm, SandwichBlock, dense, rope_table
from eqserve.models.shipped import WEIGHTS_DIR

Steps = int | tuple[int, int]
"""Core steps of a forward pass: all without gradient, or (without, with) for truncated backprop."""


def _entries(kvs: list[KV]) -> torch.Tensor:
    """Per-layer keys and values (..., H, hd) stacked as (..., layers, 2, H, hd), the cache's layout."""
    return torch.stack([torch.stack(kv, dim=-3) for kv in kvs], dim=-4)


@dataclass
class Prefill:
    """A prompt's whole-sequence pass between steps: rotary table, injection, state, entries so far."""

    table: torch.Tensor
    e: torch.Tensor
    s: torch.Tensor
    pre: torch.Tensor
    core: list[torch.Tensor] = field(default_factory=list)
    s_in: torch.Tensor | None = None
    """The last step's input state (a repeated step starts from it)."""


class LoopedTransformer(LoopedLM):
    """Huginn's recurrent-depth transformer: s ← core(adapter([s, e])) r times between prelude and coda."""

    name = "looped-lm"
    default_exit: ClassVar[ExitRule] = ExitRule(criterion="none", max_iters=48)
    """A word of n letters needs about n steps: the default covers the held-out words with room."""
    example_prompt: ClassVar[str] = "bdcfaebcdfea="

    def __init__(self, cfg: LoopedConfig, weights_dir: Path = WEIGHTS_DIR) -> None:
        super().__init__()
        self.config = cfg
        self.weights_dir = Path(weights_dir)
        """Where the explicit baseline's weights lie (beside the model's own)."""
        d = cfg.n_embd
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, d),
                "prelude": nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_prelude)),
                "adapter": nn.Linear(2 * d, d, bias=cfg.bias),
                "core_block": nn.ModuleList(
                    SandwichBlock(cfg) for _ in range(cfg.n_layers_in_recurrent_block)
                ),
                "coda": nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_coda)),
                "ln_f": RMSNorm(d, cfg.norm_eps),
            }
        )
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        table = rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base)
        self.register_buffer("freqs_cis", table, persistent=False)
        self.max_context = cfg.block_size
        self.eos = len(cfg.chars) if cfg.chars else None

    # -- the whole-sequence pass ---------------------------------------------------------------

    def forward(
        self, tokens: torch.Tensor, steps: Steps, random_state: bool = False, record: bool = False
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Logits (B, T, vocab) of token ids (B, T), every position with the same core steps.

        `steps` is a count (all without gradient when grad is off anyway) or (n, k): n steps without
        gradient then k with it (Huginn's truncated backprop). `random_state` starts from Huginn's
        scaled truncated normal (training) instead of `init_state`'s zeros. With `record`, also every
        layer's keys and values in the cache's layout: "prelude", "coda" ([(B, T, layers, 2, H, hd)])
        and "core" (one such tensor per step).
        """
        n_free, n_grad = (steps, 0) if isinstance(steps, int) else steps
        t = tokens.shape[1]
        if t > self.max_context:
            raise ValueError(f"{t} positions exceed the model's {self.max_context}")
        table = self.freqs_cis[:, :t]
        e, pre = self._run(self.transformer.prelude, self._embedding(tokens), table, record)
        s = self._random_state(e) if random_state else self.init_state(e)
        core: list[torch.Tensor] = []
        with torch.no_grad():
            for _ in range(n_free):
                s, kv = self._run(self.transformer.core_block, self._inject(s, e), table, record)
                core.append(kv)
        for _ in range(n_grad):
            s, kv = self._run(self.transformer.core_block, self._inject(s, e), table, record)
            core.append(kv)
        x, coda = self._run(self.transformer.coda, self.transformer.ln_f(s), table, record)
        logits = dense(self.transformer.ln_f(x), self.lm_head.weight).float()
        return logits, ({"prelude": [pre], "core": core, "coda": [coda]} if record else {})

    def _embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(tokens) * self.config.embed_scale

    def _random_state(self, e: torch.Tensor) -> torch.Tensor:
        """Huginn's `like-init` start: truncated normal at the init scale (times the embedding scale)."""
        std = self.config.init_std
        if self.config.state_init == "zero":
            return torch.zeros_like(e)
        x = torch.nn.init.trunc_normal_(torch.empty_like(e), std=std, a=-3 * std, b=3 * std)
        return x * self.config.embed_scale

    @staticmethod
    def _run(
        blocks: nn.ModuleList, x: torch.Tensor, table: torch.Tensor, record: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x through `blocks`; with `record` also their keys and values (else an empty tensor)."""
        kvs = []
        for block in blocks:
            x, kv = block(x, table)
            kvs.append(kv)
        return x, _entries(kvs).detach() if record else torch.empty(0)

    def _inject(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a = self.transformer.adapter
        return dense(torch.cat([s, e], dim=-1), a.weight, a.bias)

    # -- the LoopedLM contract -----------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        chars = self.config.chars
        if not chars:
            raise InputError("prompt", "this checkpoint has no character vocabulary")
        bad = sorted({c for c in text if c not in chars})
        if bad:
            raise InputError("prompt", f"characters {''.join(bad)!r} are not in the vocabulary {chars!r}")
        if not text:
            raise InputError("prompt", "the prompt is empty")
        if len(text) >= self.max_context:
            raise InputError(
                "prompt", f"{len(text)} characters leave no room in a {self.max_context} context"
            )
        return [chars.index(c) for c in text]

    def decode(self, tokens: list[int]) -> str:
        chars = self.config.chars
        return "".join(chars[t] for t in tokens if 0 <= t < len(chars))

    def new_cache(self) -> LoopedCache:
        cfg = self.config
        return LoopedCache(
            cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block, cfg.n_layers_in_coda,
            cfg.n_heads, cfg.head_dim,
        )  # fmt: skip

    def prefill(self, tokens: list[int], steps: int, cache: LoopedCache) -> None:
        """The whole-sequence pass on an empty cache, every position with `steps` core steps."""
        state = self.prefill_start(tokens, cache, steps)
        for _ in range(steps):
            self.prefill_step([state], [False])
        self.prefill_finish(state, steps, cache)

    def prefill_start(self, tokens: list[int], cache: LoopedCache, max_steps: int) -> Prefill:
        """The prelude over the prompt, and the start state of its recurrence (which steps itself, so
        it needs no budget up front)."""
        if cache.n:
            raise ValueError("a prompt is prefilled into an empty cache")
        with torch.no_grad():
            ids = torch.tensor([tokens], device=self.freqs_cis.device)
            table = self.freqs_cis[:, : ids.shape[1]]
            e, pre = self._run(self.transformer.prelude, self._embedding(ids), table, True)
            return Prefill(table, e, self.init_state(e), pre)

    def prefill_step(self, states: list[Prefill], repeat: list[bool]) -> list[torch.Tensor | None]:
        """One core step of every position of each prompt, the prompts packed in one pass (attention
        within each): their states (T_i, d), keys and values kept; where `repeat[i]`, prompt i's last
        step again from its input, nothing kept."""
        return self.batch_step(None, None, [], [], states, repeat)[1]

    def prefill_logits(self, states: list[Prefill]) -> torch.Tensor:
        """The coda over each prompt's current states (packed, nothing kept); the head on the last."""
        return self._coda(states)[0]

    def prefill_finish(self, state: Prefill, steps: int, cache: LoopedCache) -> torch.Tensor:
        """The coda over the prompt's last states; the cache takes every position's entries; the head
        on the last position gives the first new token's logits."""
        if steps < 1 or steps != len(state.core):
            raise ValueError(f"a prompt ran {len(state.core)} core steps, not {steps} (at least one)")
        logits, coda = self._coda([state])
        cache.fill(state.pre[0], [c[0] for c in state.core], coda)
        return logits[0]

    def _coda(self, states: list[Prefill]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, vocab) logits at each prompt's last position, and the coda's keys and values of every
        position (N, layers, 2, H, hd), the prompts packed end to end."""
        lengths = [st.e.shape[1] for st in states]
        with torch.no_grad():
            x = self.transformer.ln_f(torch.cat([st.s[0] for st in states]))
            table = torch.cat([st.table[0] for st in states])
            kvs = []
            for block in self.transformer.coda:
                x, kv = block.step(x, table, [], lengths)
                kvs.append(kv)
            last = torch.tensor(list(itertools.accumulate(lengths))) - 1
            logits = dense(self.transformer.ln_f(x[last]), self.lm_head.weight).float()
        return logits, _entries(kvs)

    def _table(self, caches: list[LoopedCache]) -> torch.Tensor:
        pos = [c.n for c in caches]
        if max(pos) >= self.max_context:
            raise ValueError(f"a sequence is at position {max(pos)}, past the model's {self.max_context}")
        return self.freqs_cis[0, pos]

    def embed(self, tokens: list[int], caches: list[LoopedCache]) -> torch.Tensor:
        table = self._table(caches)
        x = self._embedding(torch.tensor(tokens, device=table.device))
        kvs = []
        for layer, block in enumerate(self.transformer.prelude):
            x, kv = block.step(x, table, [c.prelude(layer) for c in caches])
            kvs.append(kv)
        for c, entries in zip(caches, _entries(kvs), strict=True):
            c.put_prelude(entries)
        return x

    def init_state(self, e: torch.Tensor) -> torch.Tensor:
        """Zeros: the centre of Huginn's random start, so a row's start depends on nothing at all."""
        return torch.zeros_like(e)

    def core_step(
        self, s: torch.Tensor, e: torch.Tensor, caches: list[LoopedCache], steps: list[int]
    ) -> torch.Tensor:
        new, _ = self.batch_step(s, e, caches, steps, [], [])
        assert new is not None
        return new

    def batch_step(
        self,
        s: torch.Tensor | None,
        e: torch.Tensor | None,
        caches: list[LoopedCache],
        steps: list[int],
        prompts: list[Prefill],
        repeat: list[bool],
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """The decoding rows' core step and the prompts' prefill step as one pass: the adapter and the
        core block's dense products run once over the rows' tokens and the prompts' positions packed
        after them, the attention row by row and prompt by prompt."""
        rows, lengths = len(caches), [st.e.shape[1] for st in prompts]
        xs, es, tables = [], [], []
        if rows:
            assert s is not None and e is not None
            xs.append(s)
            es.append(e)
            tables.append(self._table(caches))
        for st, r in zip(prompts, repeat, strict=True):
            xs.append((st.s_in if r else st.s)[0])
            es.append(st.e[0])
            tables.append(st.table[0])
        with torch.no_grad():
            x = self._inject(torch.cat(xs), torch.cat(es))
            table = torch.cat(tables)
            kvs = []
            for layer, block in enumerate(self.transformer.core_block):
                past = [c.core(j, layer) for c, j in zip(caches, steps, strict=True)]
                x, kv = block.step(x, table, past, lengths)
                kvs.append(kv)
            entries = _entries(kvs)
        for c, j, row in zip(caches, steps, entries[:rows], strict=True):
            c.put_core(j, row)
        out: list[torch.Tensor | None] = []
        at = rows
        for st, r, n in zip(prompts, repeat, lengths, strict=True):
            new = x[at : at + n]
            if not r:
                st.s_in, st.s = st.s, new[None]
                st.core.append(entries[None, at : at + n])
            out.append(new)
            at += n
        return (x[:rows] if rows else None), out

    def logits(self, s: torch.Tensor, caches: list[LoopedCache], commit: bool) -> torch.Tensor:
        table = self._table(caches)
        x = self.transformer.ln_f(s)
        kvs = []
        for layer, block in enumerate(self.transformer.coda):
            x, kv = block.step(x, table, [c.coda(layer) for c in caches])
            kvs.append(kv)
        out = dense(self.transformer.ln_f(x), self.lm_head.weight).float()
        if commit:
            for c, entries in zip(caches, _entries(kvs), strict=True):
                c.commit(entries)
        return out

    def evaluate(self, iters: list[int]) -> EvalReport:
        """Exact-answer error on the held-out (longer) split at each fixed r, and the explicit baseline's."""
        from eqserve.models.looped_lm.evaluate import evaluate

        return evaluate(self, iters, self.weights_dir)
