"""The paged KV cache: fixed-size blocks with reference counts, copy-on-write, a prefix index
and least-recently-used eviction.

Storage per layer is ``(num_blocks, block_size, H_kv, D)`` for keys and for values, the layout
the attention kernels read (``ponder.kernels.paged_attention``). A :class:`Sequence` is a list
of block ids plus its tokens; every block it lists holds one reference.

- ``fork`` gives a child that lists the parent's blocks (one more reference each): nothing is
  copied. The first write into a block that someone else also references copies that block
  first (copy-on-write). Only a sequence's last block is ever written, and only while it is
  partial, so at most one block per fork is copied.
- A block that becomes full is entered in the prefix index under (the index entry of the
  block before it, its tokens): the key names the whole prefix exactly, so a new prompt that
  starts with the same tokens finds the chain of blocks and computes only the rest. Entry ids
  are never reused, so an evicted entry's descendants can no longer be found.
- A block whose last reference goes away stays cached (and findable) if it is indexed, else it
  is freed. Cached blocks are evicted least recently released first when a new block is
  needed and none is free.
- Running out (every block referenced) raises :class:`KVCacheExhausted` before anything is
  changed, so callers can release and retry.
"""

from __future__ import annotations

import math
import mmap
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.engine.config import KVCacheExhausted

_ROOT_KEY = 0  # the "entry before the first block"


@dataclass(eq=False)
class Sequence:
    """A token sequence whose keys and values live in the pool's blocks (a policy handle)."""

    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # index entry of each full block, in order
    hidden: torch.Tensor | None = None  # (D,) final-norm hidden state at the last token
    released: bool = False

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass
class _Entry:
    block: int
    key: tuple[int, tuple[int, ...]]
    hidden: torch.Tensor | None  # (D,) at the block's last token: a fully cached prompt needs no forward


@dataclass
class CacheStats:
    num_blocks: int
    block_size: int
    bytes_per_block: int
    referenced_blocks: int  # held by live sequences
    cached_blocks: int  # unreferenced but indexed (evictable)
    free_blocks: int
    evictions: int
    reused_tokens: int  # prompt tokens served from the prefix index so far

    @property
    def referenced_bytes(self) -> int:
        return self.referenced_blocks * self.bytes_per_block


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, bool]:
    """Storage of ``shape`` whose pages are committed on first write, and whether it is known to
    read as zeros: anonymous mmap memory on the CPU (zero pages from the OS), torch.empty
    elsewhere (contents undefined)."""
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device), False
    count = math.prod(shape)
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(1, nbytes))  # anonymous and private: zero-filled, reserved lazily
    # frombuffer holds a reference to the mmap: it is unmapped when the tensor is freed
    return torch.frombuffer(buf, dtype=dtype, count=count).view(shape), True


class BlockPool:
    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        block_size: int,
        max_bytes: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        elem = torch.empty((), dtype=dtype).element_size()
        self.block_size = block_size
        self.bytes_per_block = 2 * n_layers * block_size * n_kv_heads * head_dim * elem
        self.bytes_per_token = self.bytes_per_block // block_size
        num_blocks = max_bytes // self.bytes_per_block
        if num_blocks < 1:
            raise InvalidArgument(
                "engine.max_kv_bytes", f"{max_bytes} bytes hold no block of {self.bytes_per_block} bytes"
            )
        self.num_blocks = num_blocks
        shape = (n_layers, num_blocks, block_size, n_kv_heads, head_dim)
        # Pages are committed on first write, so the cap costs nothing until blocks are used.
        # Every block must read as zeros the first time it is handed out (block 0, the padding
        # entry of block tables, from the start): never-written memory may hold NaN, and a
        # masked slot's value times probability 0 must stay 0 in the attention products. On the
        # CPU the storage is anonymous mmap memory, which the OS hands out as zero pages, so no
        # block needs zeroing; elsewhere (torch.empty) each block is zeroed on first use.
        self.k, zeroed = _lazy_zeros(shape, dtype, device)  # (L, NB, BS, H_kv, D)
        self.v, _ = _lazy_zeros(shape, dtype, device)
        self._clean = bytearray(b"\x01" * num_blocks) if zeroed else bytearray(num_blocks)
        if not zeroed:
            self._zero([0])
        self.ref = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: low ids first
        self._cached: OrderedDict[int, None] = OrderedDict()  # unreferenced, indexed; LRU first
        self._index: dict[tuple[int, tuple[int, ...]], int] = {}  # key -> entry id
        self._entries: dict[int, _Entry] = {}  # entry id -> entry
        self._entry_of_block: dict[int, int] = {}
        self._next_entry = _ROOT_KEY + 1
        self.evictions = 0
        self.reused_tokens = 0

    # -- accounting -------------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Blocks a new allocation may take (free plus evictable)."""
        return len(self._free) + len(self._cached)

    def stats(self) -> CacheStats:
        free, cached = len(self._free), len(self._cached)
        return CacheStats(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            bytes_per_block=self.bytes_per_block,
            referenced_blocks=self.num_blocks - free - cached,
            cached_blocks=cached,
            free_blocks=free,
            evictions=self.evictions,
            reused_tokens=self.reused_tokens,
        )

    def check_consistent(self) -> None:
        """Internal invariants (used by the tests after errors)."""
        assert len(set(self._free)) == len(self._free)
        for b in self._free:
            assert self.ref[b] == 0 and b not in self._cached and b not in self._entry_of_block
        for b in self._cached:
            assert self.ref[b] == 0 and b in self._entry_of_block
        free = set(self._free)
        for b, r in enumerate(self.ref):
            assert r >= 0
            if r == 0:
                assert (b in self._cached) != (b in free)
        for eid, e in self._entries.items():
            assert self._index[e.key] == eid and self._entry_of_block[e.block] == eid

    # -- references -------------------------------------------------------------------------

    def _take(self, n: int) -> list[int]:
        if n > self.available:
            raise KVCacheExhausted(n - self.available, self.num_blocks, self.num_blocks - self.available)
        out = []
        for _ in range(n):
            if self._free:
                b = self._free.pop()
            else:
                b, _ = self._cached.popitem(last=False)  # least recently released
                self._unindex(b)
                self.evictions += 1
            self.ref[b] = 1
            out.append(b)
        self._zero([b for b in out if not self._clean[b]])
        return out

    def _zero(self, blocks: list[int]) -> None:
        if blocks:
            idx = torch.tensor(blocks, device=self.k.device)
            self.k[:, idx] = 0
            self.v[:, idx] = 0
            for b in blocks:
                self._clean[b] = 1

    def _unindex(self, block: int) -> None:
        eid = self._entry_of_block.pop(block, None)
        if eid is not None:
            entry = self._entries.pop(eid)
            del self._index[entry.key]

    def clear_cache(self) -> int:
        """Drop every cached (unreferenced, indexed) block: a cold prefix index. Returns how many."""
        n = len(self._cached)
        while self._cached:
            b, _ = self._cached.popitem(last=False)
            self._unindex(b)
            self._free.append(b)
        return n

    def incref(self, blocks: list[int]) -> None:
        for b in blocks:
            if self.ref[b] == 0:
                # A cached block found through the index comes back into use.
                assert b in self._cached, f"block {b} is free, not referenced"
                del self._cached[b]
            self.ref[b] += 1

    def decref(self, blocks: list[int]) -> None:
        for b in blocks:
            assert self.ref[b] > 0, f"block {b} released twice"
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if b in self._entry_of_block:
                    self._cached[b] = None  # most recently released: evicted last
                else:
                    self._free.append(b)

    def fork(self, parent: Sequence) -> Sequence:
        """A child sharing every block of ``parent`` (no copy)."""
        if parent.released:
            raise ValueError("cannot fork a released sequence")
        self.incref(parent.blocks)
        return Sequence(list(parent.blocks), list(parent.tokens), list(parent.keys), parent.hidden)

    def release(self, seq: Sequence) -> None:
        if seq.released:
            return
        self.decref(seq.blocks)
        seq.blocks = []
        seq.released = True

    # -- writing ----------------------------------------------------------------------------

    def prepare_append(self, seqs: list[Sequence], n_new: list[int]) -> None:
        """Make room for ``n_new[i]`` more tokens in ``seqs[i]``: new blocks where needed, and a
        private copy of a shared partial last block (copy-on-write). All or nothing."""
        bs = self.block_size
        need = 0
        cow: list[int] = []
        for i, (s, n) in enumerate(zip(seqs, n_new, strict=True)):
            if n <= 0:
                continue
            if s.length % bs and self.ref[s.blocks[s.length // bs]] > 1:
                cow.append(i)
                need += 1
            need += -(-(s.length + n) // bs) - len(s.blocks)
        fresh = self._take(need)  # raises before any change
        src, dst = [], []
        for i in cow:
            s = seqs[i]
            b = fresh.pop()
            j = s.length // bs
            src.append(s.blocks[j])
            dst.append(b)
            self.decref([s.blocks[j]])
            s.blocks[j] = b
        if src:
            # One copy for all the forks of this call (whole blocks: the tail is overwritten).
            si, di = torch.tensor(src), torch.tensor(dst)
            self.k[:, di] = self.k[:, si]
            self.v[:, di] = self.v[:, si]
        for s, n in zip(seqs, n_new, strict=True):
            while len(s.blocks) * bs < s.length + n:
                s.blocks.append(fresh.pop())
        assert not fresh

    def slots(self, seq: Sequence, start: int, n: int) -> list[int]:
        """Flat slot ids (block * block_size + offset) of positions start..start+n-1."""
        bs = self.block_size
        return [seq.blocks[p // bs] * bs + p % bs for p in range(start, start + n)]

    def commit(self, seq: Sequence, tokens: list[int], hidden: torch.Tensor) -> None:
        """Record ``tokens`` (already written at the sequence's end) and index the blocks they
        filled. ``hidden``: (len(tokens), D) final-norm hidden states of those tokens; the
        caller sets ``seq.hidden`` (the decode loop does it once, at the step's end)."""
        bs = self.block_size
        start = seq.length
        seq.tokens.extend(tokens)
        full = seq.length // bs
        while len(seq.keys) < full:
            i = len(seq.keys)
            parent = seq.keys[i - 1] if i else _ROOT_KEY
            last = (i + 1) * bs - 1 - start  # row of the block's last token in ``hidden``
            h = hidden[last].clone() if 0 <= last < hidden.shape[0] else None
            seq.keys.append(self._register(seq.blocks[i], parent, tuple(seq.tokens[i * bs : (i + 1) * bs]), h))

    def _register(self, block: int, parent: int, tokens: tuple[int, ...], hidden: torch.Tensor | None) -> int:
        key = (parent, tokens)
        eid = self._index.get(key)
        if eid is not None:
            return eid  # the same prefix is already indexed (computed twice in one batch)
        if block in self._entry_of_block:  # indexed under an older chain: keep that entry
            return self._entry_of_block[block]
        eid = self._next_entry
        self._next_entry += 1
        self._index[key] = eid
        self._entries[eid] = _Entry(block, key, hidden)
        self._entry_of_block[block] = eid
        return eid

    # -- the prefix index -------------------------------------------------------------------

    def lookup(self, tokens: list[int]) -> Sequence:
        """A new sequence holding the longest indexed chain of full blocks that ``tokens``
        starts with (possibly empty). Its ``hidden`` is set when it covers all of ``tokens``."""
        bs = self.block_size
        seq = Sequence()
        parent = _ROOT_KEY
        entry: _Entry | None = None
        for i in range(len(tokens) // bs):
            eid = self._index.get((parent, tuple(tokens[i * bs : (i + 1) * bs])))
            if eid is None:
                break
            entry = self._entries[eid]
            seq.blocks.append(entry.block)
            seq.keys.append(eid)
            parent = eid
        n = len(seq.blocks) * bs
        if n == len(tokens) and n and (entry is None or entry.hidden is None):
            # Fully cached but the last hidden state is unknown: recompute the last block.
            seq.blocks.pop()
            seq.keys.pop()
            n -= bs
            entry = None
        self.incref(seq.blocks)
        seq.tokens = list(tokens[:n])
        if n == len(tokens) and entry is not None:
            seq.hidden = entry.hidden
        self.reused_tokens += n
        return seq
