"""The coding loop of prompt model 2 ("mix", see prompt_mix): plain integer code, compiled with numba when
installed (the `fast` extra), run as plain Python otherwise, with the same results.

Kept in its own module so that numba's on-disk cache of the compiled loop stays valid while the rest
of the model code changes. Credits: Matt Mahoney's lpaq1 (the binary arithmetic coder, state maps,
mixers and APMs this loop follows; see prompt_mix).
"""

# ruff: noqa: SIM109
from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from layercast.common.codecs.jit import jitable, njit_or_none

# Component kinds (the model file lists the kind of each static component).
KIND_ORDER = 0  # kinds 0..15: byte context of that order
KIND_WORD1 = 16  # current word so far (and the separator byte before it at a word start)
KIND_WORD2 = 17  # ... and the previous word
KIND_WORD3 = 18  # ... and the two previous words

MODE_ENCODE = 0
MODE_DECODE = 1
MODE_TRAIN = 2
MODE_COUNT = 3
MODE_UNCOUNT = 4
MODE_EVAL = 5
MODE_KEYS = 6

M32 = 0xFFFFFFFF
WMAX = 1 << 22
NSEL = 4  # first-layer mixers
SEL_BASE1 = 256  # weight sets: c0 (256), then (conf, match) (64), then c1 (257), then (order, word length) (40)
SEL_BASE2 = SEL_BASE1 + 64
SEL_BASE3 = SEL_BASE2 + 257
SEL_END = SEL_BASE3 + 40
NFINAL = 16

_KJ: Any = None  # the compiled kernel, which the compiled batch calls (set by `jitted`)


def word_step(byte: int, w0: int, w1: int, w2: int, wlen: int) -> tuple[int, int, int, int]:
    """The word state after `byte`: (w0, w1, w2, wlen), the hash of the current word so far, of the
    previous word and of the one before it, and the current word's length. Words are runs of letters
    (case-folded), digits and non-ASCII bytes; any other byte ends the current word (if any). Called by
    `kernel`, plain or compiled (`jitted` lets numba compile it into the kernel)."""
    lower = byte + 32 if 65 <= byte <= 90 else byte
    if (97 <= lower <= 122) or (48 <= byte <= 57) or byte >= 128:
        return ((w0 + lower + 1) * 0x2C9277B5) & M32, w1, w2, wlen + 1
    if wlen > 0:
        return 0, w0, w1, 0
    return w0, w1, w2, wlen


def find(arr: Any, a: int, e: int, v: int) -> int:
    """The first index of `v` in arr[a:e] (ascending), or -1 where it is not there (a binary search)."""
    lim = e
    while a < e:
        m = (a + e) >> 1
        if arr[m] < v:
            a = m + 1
        else:
            e = m
    return a if a < lim and arr[a] == v else -1


def count_state(n0: int, n1: int, st: Any) -> int:
    """The state (0..255) of a context that has seen `n0` zeros and `n1` ones at this bit: exact for fewer
    than 8 in all (0..35), else the band of the total (36 each) and the stretched frequency of ones, in
    36 steps. st: the stretch table."""
    n = n0 + n1
    if n < 8:
        return ((n * (n + 1)) >> 1) + n1
    r = ((st[((2 * n1 + 1) * 4096) // (2 * n + 2)] + 2048) * 36) >> 12
    band = 5 if n >= 512 else (4 if n >= 128 else (3 if n >= 64 else (2 if n >= 32 else int(n >= 16))))
    return 36 + 36 * band + r


def kernel_for(ix: Callable[[int], Any]) -> Callable[..., int]:
    """The coding loop (`kernel`) with every array index wrapped in `ix`: the compiled build passes np.uint64,
    for which numba emits no negative-index wraparound (every index here is non-negative; ~20% faster
    coding), plain Python the cheap `operator.index` (`kernel` below)."""

    def kernel(
        mode, data, ndata, out, maxlen,
        kinds, thr, kseg, keys, trie, ksym, cstart, syms, cnts,
        sm, smn, mw, ap1, ap2,
        acnt, atag, mtab, mtag, tag,
        hist, hh, xs, sidx, lo, hi, split, sets, terms, keyout,
        cq, st, sq, lg, recip, prm,
    ):  # fmt: skip
        """Code one text. Returns: encode: the coder byte count, written to `out`; decode: the text length,
        written to `out` (-1: more than `maxlen` bytes; -2: no text ends where the data ends); train / eval:
        the cost in 1/65536 bits (eval also writes the cost so far after each byte to `keyout`, when it is long
        enough); keys: the byte count; count / uncount: 0.

        mode: MODE_*. data: the text (every mode but decode; `ndata` bytes) or the coder bytes (decode; `ndata`
        bytes, zeros read past the end). Static model (prompt_mix.MixTables): component i is kinds[i] (byte
        orders 0..K first, then words) with count threshold thr[i] and contexts kseg[i]:kseg[i + 1]; order
        contexts form a trie (trie[2j], trie[2j + 1]: first child and child count of context j; ksym[j]: the
        byte the child adds to its parent's context, 256 = before the text), word contexts are found by their
        sorted keys; context j's symbols are syms[cstart[j]:cstart[j + 1]] (ascending) with counts cnts[...].
        sm / smn: state maps (16-bit probabilities, 256 states per static and adaptive component, then 64 for
        the match model) and their update counts (train). mw: mixer weights (16.16); ap1 / ap2: APM bins
        (16-bit). acnt / atag, mtab / mtag: the within-prompt tables, valid where their tag is `tag`. hist:
        the text so far; hh, xs, sidx, lo, hi, split, sets: scratch; terms: the terminations of the prefixes
        (3 numbers per byte boundary); keyout: (keys mode) key * 256 + byte for every byte and word
        component. cq / st / sq / lg / recip: count quantiser (train, eval), stretch, squash, cost and
        1/(n + 1.5) tables; prm: integer parameters (prompt_mix.PRM_FIELDS).
        """
        nc = len(kinds)
        na = prm[0]
        abits = prm[1]
        mbits = prm[2]
        lr = prm[3]
        ap_rate = prm[4]
        ap2bits = prm[5]
        sm_limit = prm[6]
        minlen = prm[7]
        keybits = prm[8]
        lr2 = prm[9]
        nin = nc + na + 2
        amask = (1 << abits) - 1
        kmask = (1 << keybits) - 1
        reads_text = mode != MODE_DECODE
        learn = mode == MODE_TRAIN
        use_cq = mode == MODE_TRAIN or mode == MODE_EVAL
        coding = mode == MODE_ENCODE or mode == MODE_DECODE
        counting = mode == MODE_COUNT or mode == MODE_UNCOUNT or mode == MODE_KEYS
        keys_mode = mode == MODE_KEYS
        nord = 0
        while nord < nc and kinds[ix(nord)] == nord:
            nord += 1
        delta = 1 if mode == MODE_COUNT else -1
        x1 = 0
        x2 = M32
        x = 0
        inpos = 0
        outpos = 0
        if mode == MODE_DECODE:
            for _ in range(4):
                x = (x << 8) | (int(data[ix(inpos)]) if inpos < ndata else 0)
                inpos += 1
        cost = 0
        pos = 0
        w0 = 0
        w1 = 0
        w2 = 0
        wlen = 0
        c1 = 0
        c2 = 0
        mlen = 0
        mptr = 0
        nterm = 0
        while True:
            if coding:
                # The termination a text ending here would get: the shortest byte string F (by length, then value)
                # such that E + F (E: the bytes the coder has shifted out) lies in [x1, x2] when read with zeros
                # after it, does not end with a zero byte, and is not the termination of a shorter prefix; the
                # decoder stops at the first boundary whose termination is the whole unit.
                ek = outpos if mode == MODE_ENCODE else inpos - 4
                if mode == MODE_DECODE and ek > ndata:
                    return -2  # every termination from here on is longer than the unit
                tl = -1
                tf = 0
                for ln in range(6):
                    if ln == 0:
                        last = (out[ix(ek - 1)] if mode == MODE_ENCODE else data[ix(ek - 1)]) if ek > 0 else 1
                        cands = 1 if x1 == 0 and last != 0 else 0
                        step = 0
                        v = 0
                    elif ln <= 4:
                        sh = 32 - 8 * ln
                        step = 1 << sh
                        v = ((x1 + step - 1) >> sh) << sh
                        cands = 64
                    else:
                        step = 1
                        v = x1 * 256 + 1
                        cands = 1 << 20
                    for _ in range(cands):
                        if ln >= 1 and ln <= 4:
                            if v > x2:
                                break
                            f = v >> (32 - 8 * ln)
                        else:
                            f = v
                        if (ln >= 1 and (f & 255) == 0) or (ln == 5 and (f >> 8) > x2):
                            v += step
                            continue
                        used = False
                        j = nterm - 1
                        while j >= 0 and terms[ix(3 * j)] >= ek - 5:
                            te = terms[ix(3 * j)]
                            if te + terms[ix(3 * j + 1)] == ek + ln:
                                same = True
                                for q in range(te, ek + ln):
                                    if q < ek:
                                        cb = int(out[ix(q)]) if mode == MODE_ENCODE else int(data[ix(q)])
                                    else:
                                        cb = (f >> (8 * (ek + ln - 1 - q))) & 255
                                    if cb != (terms[ix(3 * j + 2)] >> (8 * (te + terms[ix(3 * j + 1)] - 1 - q))) & 255:
                                        same = False
                                        break
                                if same:
                                    used = True
                                    break
                            j -= 1
                        if not used:
                            tl = ln
                            tf = f
                            break
                        v += step
                    if tl >= 0:
                        break
                terms[ix(3 * nterm)] = ek
                terms[ix(3 * nterm + 1)] = tl
                terms[ix(3 * nterm + 2)] = tf
                nterm += 1
                if mode == MODE_ENCODE:
                    if pos == ndata:
                        for q in range(tl):
                            out[ix(outpos)] = (tf >> (8 * (tl - 1 - q))) & 255
                            outpos += 1
                        return outpos
                else:
                    if ek + tl == ndata:
                        same = True
                        for q in range(tl):
                            if data[ix(ek + q)] != (tf >> (8 * (tl - 1 - q))) & 255:
                                same = False
                                break
                        if same:
                            return pos
                    if pos >= maxlen:
                        return -1
            elif pos == ndata:
                break
            cur = int(data[ix(pos)]) if reads_text else 0
            # --- the contexts of this byte: byte orders by walking the context trie, words by key ---
            node = 0
            for i in range(nord):
                if i > 0 and node >= 0 and not keys_mode:
                    bb = int(hist[ix(pos - i)]) if pos >= i else 256
                    a = trie[ix(2 * node)]
                    node = find(ksym, a, a + trie[ix(2 * node + 1)], bb)
                if node >= 0 and not keys_mode:
                    lo[ix(i)] = cstart[ix(node)]
                    hi[ix(i)] = cstart[ix(node + 1)]
                else:
                    lo[ix(i)] = 0
                    hi[ix(i)] = 0
            for i in range(nord, nc):
                k = kinds[ix(i)]
                h = ((k + 1) * 0x3C6EF372) & M32
                if k == KIND_WORD1:
                    h = (((h * 0x2C9277B5 + w0) & M32) * 0x1B873593 + (c1 if wlen == 0 else 0)) & M32
                elif k == KIND_WORD2:
                    h = (((h * 0x2C9277B5 + w0) & M32) * 0x1B873593 + w1 * 31 + (c1 if wlen == 0 else 0)) & M32
                else:
                    h = (((((h * 0x2C9277B5 + w0) & M32) * 0x1B873593 + w1) & M32) * 0x2C9277B5 + w2) & M32
                h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & M32
                h = (h ^ (h >> 13)) & kmask
                if keys_mode:
                    keyout[ix(pos * (nc - nord) + i - nord)] = h * 256 + cur
                    continue
                a = find(keys, kseg[ix(i)], kseg[ix(i + 1)], h)
                if a >= 0:
                    lo[ix(i)] = cstart[ix(a)]
                    hi[ix(i)] = cstart[ix(a + 1)]
                else:
                    lo[ix(i)] = 0
                    hi[ix(i)] = 0
            if mode == MODE_COUNT or mode == MODE_UNCOUNT:
                for i in range(nc):
                    for q in range(lo[ix(i)], hi[ix(i)]):
                        if syms[ix(q)] == cur:
                            cnts[ix(q)] += delta
                            break
            if counting:
                hist[ix(pos)] = cur
                pos += 1
                c1 = cur + 1
                w0, w1, w2, wlen = word_step(cur, w0, w1, w2, wlen)
                continue
            for a in range(na):
                h = ((a + 7) * 0x7FEB352D) & M32
                for j in range(1, a + 2):
                    b = int(hist[ix(pos - j)]) + 2 if pos >= j else 1
                    h = (h * 0x2C9277B5 + b) & M32
                h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & M32
                hh[ix(nc + a)] = h ^ (h >> 13)
            # match model: follow the current match, or look the last `minlen` bytes up
            if mlen > 0:
                if hist[ix(mptr)] == hist[ix(pos - 1)]:
                    mlen += 1
                    mptr += 1
                else:
                    mlen = 0
            if pos >= minlen:
                h = 0
                for j in range(1, minlen + 1):
                    h = (h * 0x2C9277B5 + int(hist[ix(pos - j)]) + 1) & M32
                h = (((h ^ (h >> 15)) * 0x2C1B3C6D) & M32) >> (32 - mbits)
                if mlen == 0 and mtag[ix(h)] == tag:
                    cand = mtab[ix(h)]
                    n = 0
                    while n < 32 and cand - 1 - n >= 0 and hist[ix(cand - 1 - n)] == hist[ix(pos - 1 - n)]:
                        n += 1
                    if n >= minlen:
                        mlen = n
                        mptr = cand
                mtab[ix(h)] = pos
                mtag[ix(h)] = tag
            pbyte = (int(hist[ix(mptr)]) | 256) if mlen > 0 else 0
            mbucket = 0 if mlen == 0 else (1 if mlen < 8 else (2 if mlen < 16 else 3))
            h2ctx = (c1 * 0x2C9277B5 + c2 * 0x1B873593 + 0x3C6EF372) & M32
            # --- the 8 bits ---
            c0 = 1
            for bitpos in range(8):
                y = (cur >> (7 - bitpos)) & 1
                bitmask = 1 << (7 - bitpos)
                cmul = (c0 * 0x01000193) & M32
                conf = 0
                for i in range(nc):
                    t = thr[ix(i)]
                    n0 = 0
                    n1 = 0
                    m = hi[ix(i)]
                    for q in range(lo[ix(i)], hi[ix(i)]):
                        c = cnts[ix(q)]
                        if c < t:
                            c = 0
                        elif use_cq:
                            c = cq[ix(min(c, len(cq) - 1))]
                        if syms[ix(q)] & bitmask:
                            if m == hi[ix(i)]:
                                m = q
                            n1 += c
                        else:
                            n0 += c
                    split[ix(i)] = m
                    s = count_state(n0, n1, st)
                    if s != 0:
                        conf += 1
                    sidx[ix(i)] = i * 256 + s
                for a in range(na):
                    slot = a * (amask + 1) + ((((hh[ix(nc + a)] ^ cmul) * 0x2C9277B5) & M32) >> (32 - abits))
                    if atag[ix(slot)] != tag:
                        atag[ix(slot)] = tag
                        acnt[ix(2 * slot)] = 0
                        acnt[ix(2 * slot + 1)] = 0
                    n0 = acnt[ix(2 * slot)]
                    n1 = acnt[ix(2 * slot + 1)]
                    s = count_state(n0, n1, st)
                    sidx[ix(nc + a)] = (nc + a) * 256 + s
                for i in range(nc + na):
                    xs[ix(i)] = st[ix(sm[ix(sidx[ix(i)])] >> 4)]
                mi = nc + na
                ebit = -1
                if pbyte != 0 and (pbyte >> (8 - bitpos)) == c0:
                    ebit = (pbyte >> (7 - bitpos)) & 1
                    sidx[ix(mi)] = mi * 256 + min(mlen, 31) * 2 + ebit
                    xs[ix(mi)] = st[ix(sm[ix(sidx[ix(mi)])] >> 4)]
                else:
                    sidx[ix(mi)] = -1
                    xs[ix(mi)] = 0
                xs[ix(mi + 1)] = 256
                # layer 1: NSEL mixers, each with weight sets chosen by its own context; layer 2 mixes their outputs
                hiord = 0
                for i in range(nc):
                    if kinds[ix(i)] < 16 and sidx[ix(i)] != i * 256 and kinds[ix(i)] + 1 > hiord:
                        hiord = kinds[ix(i)] + 1
                sets[0] = c0 * nin
                sets[1] = (SEL_BASE1 + min(conf, 15) * 4 + (mbucket if ebit >= 0 else 0)) * nin
                sets[2] = (SEL_BASE2 + c1) * nin
                sets[3] = (SEL_BASE3 + min(hiord, 9) * 4 + min(wlen, 3)) * nin
                fset = SEL_END * nin + min(conf, 15) * (NSEL + 1)
                dm = 0
                for k in range(NSEL):
                    d = 0
                    base = sets[ix(k)]
                    for i in range(nin):
                        d += mw[ix(base + i)] * xs[ix(i)]
                    d = max(-2047, min(2047, d >> 16))
                    xs[ix(nin + k)] = d
                    dm += mw[ix(fset + k)] * d
                xs[ix(nin + NSEL)] = 256
                dm += mw[ix(fset + NSEL)] * 256
                dm = max(-2047, min(2047, dm >> 16))
                pm = sq[ix(dm + 2048)]
                # two APMs, interpolating between 33 bins of the stretched probability
                sv = dm + 2048
                lo33 = sv >> 7
                wt = sv & 127
                a1 = (c0 + 256 * min(conf, 15)) * 33 + lo33
                pa1 = (ap1[ix(a1)] * (128 - wt) + ap1[ix(a1 + 1)] * wt) >> 11
                a2 = ((((h2ctx + c0 * 0x9E3779B1) * 0x2C9277B5) & M32) >> (32 - ap2bits)) * 33 + lo33
                pa2 = (ap2[ix(a2)] * (128 - wt) + ap2[ix(a2 + 1)] * wt) >> 11
                p = max(1, min(4095, (2 * pm + pa1 + pa2 + 2) >> 2))  # P(bit = 1) in 1/4096
                # --- code the bit: carry-less binary arithmetic coder (lpaq1) ---
                if coding:
                    xmid = x1 + ((x2 - x1) >> 12) * p
                    if mode == MODE_DECODE:
                        y = 1 if x <= xmid else 0
                    if y:
                        x2 = xmid
                    else:
                        x1 = xmid + 1
                    while ((x1 ^ x2) & 0xFF000000) == 0:
                        if mode == MODE_ENCODE:
                            out[ix(outpos)] = x2 >> 24
                            outpos += 1
                        else:
                            x = ((x << 8) & M32) | (int(data[ix(inpos)]) if inpos < ndata else 0)
                            inpos += 1
                        x1 = (x1 << 8) & M32
                        x2 = ((x2 << 8) & M32) | 255
                else:
                    cost += lg[ix(p)] if y else lg[ix(4096 - p)]
                if learn:
                    for i in range(nc + na + 1):
                        k = sidx[ix(i)]
                        if k >= 0:
                            n = smn[ix(k)]
                            sm[ix(k)] += (((y << 16) - sm[ix(k)]) * recip[ix(n)]) >> 16
                            if n < sm_limit:
                                smn[ix(k)] = n + 1
                    for k in range(NSEL):
                        e = ((y << 12) - sq[ix(xs[ix(nin + k)] + 2048)]) * lr
                        base = sets[ix(k)]
                        for i in range(nin):
                            mw[ix(base + i)] = max(-WMAX, min(WMAX, mw[ix(base + i)] + ((xs[ix(i)] * e) >> 14)))
                    e = ((y << 12) - pm) * lr2
                    for k in range(NSEL + 1):
                        mw[ix(fset + k)] = max(-WMAX, min(WMAX, mw[ix(fset + k)] + ((xs[ix(nin + k)] * e) >> 14)))
                    q = a1 + (wt >> 6)
                    ap1[ix(q)] += ((y << 16) - ap1[ix(q)]) >> ap_rate
                    q = a2 + (wt >> 6)
                    ap2[ix(q)] += ((y << 16) - ap2[ix(q)]) >> ap_rate
                # the within-prompt models learn in every mode (encoder and decoder alike)
                for a in range(na):
                    slot = a * (amask + 1) + ((((hh[ix(nc + a)] ^ cmul) * 0x2C9277B5) & M32) >> (32 - abits))
                    q = 2 * slot + y
                    if acnt[ix(q)] < 1023:
                        acnt[ix(q)] += 1
                for i in range(nc):
                    if y:
                        lo[ix(i)] = split[ix(i)]
                    else:
                        hi[ix(i)] = split[ix(i)]
                c0 = (c0 << 1) | y
            byte = c0 - 256
            if mode == MODE_EVAL and len(keyout) > pos:
                keyout[ix(pos)] = cost  # the cost so far, for analysis
            if mode == MODE_DECODE:
                out[ix(pos)] = byte
            hist[ix(pos)] = byte
            pos += 1
            c2 = c1
            c1 = byte + 1
            w0, w1, w2, wlen = word_step(byte, w0, w1, w2, wlen)
        if mode == MODE_KEYS:
            return pos
        return cost

    kernel.__qualname__ = "kernel"  # names its numba cache files
    return kernel


kernel = kernel_for(operator.index)
"""The coding loop as plain Python (see `kernel_for`)."""


def batch(
    stage, texts, starts, order,
    kinds, thr, kseg, keys, trie, ksym, cstart, syms, cnts,
    sm, smn, mw, ap1, ap2,
    acnt, atag, mtab, mtag,
    hist, hh, xs, sidx, lo, hi, split, sets, terms, keyout,
    cq, st, sq, lg, recip, prm,
):  # fmt: skip
    """The builder's loop over texts in `order` (numba only). Stage 0: the keys of every byte of every
    text, concatenated in `keyout` (returns their count); stage 1: leave-one-out training (each text's
    own counts are taken out while it is trained on); stage 2: evaluation of texts not in the counts.
    Stages 1 and 2 return the total cost in 1/65536 bits."""
    total = 0
    dummy = np.zeros(1, np.uint8)
    nw = len(kinds)
    while nw > 0 and kinds[len(kinds) - nw] < 16:
        nw -= 1
    tag = 0
    nsteps = 3 if stage == 1 else 1
    for r in range(len(order)):
        i = order[r]
        t = texts[starts[i] : starts[i + 1]]
        n = starts[i + 1] - starts[i]
        for step in range(nsteps):
            tag += 1
            if stage == 0:
                mode = MODE_KEYS
            elif stage == 2:
                mode = MODE_EVAL
            else:
                mode = MODE_UNCOUNT if step == 0 else (MODE_TRAIN if step == 1 else MODE_COUNT)
            ko = keyout[total * nw :] if stage == 0 else keyout
            got = _KJ(
                mode, t, n, dummy, 0, kinds, thr, kseg, keys, trie, ksym, cstart, syms, cnts, sm, smn, mw, ap1, ap2,
                acnt, atag, mtab, mtag, tag, hist, hh, xs, sidx, lo, hi, split, sets, terms, ko, cq, st, sq, lg, recip,
                prm,
            )  # fmt: skip
            if mode == MODE_KEYS or mode == MODE_TRAIN or mode == MODE_EVAL:
                total += got
    return total


@functools.cache
def jitted() -> tuple[Any, Any] | None:
    """numba builds of (kernel, batch), or None without numba (then `kernel` runs as plain Python)."""
    for helper in (word_step, find, count_state):  # before the kernel that calls them is compiled
        jitable(helper)
    kj = njit_or_none(kernel_for(np.uint64))
    if kj is None:
        return None
    globals()["_KJ"] = kj
    return kj, njit_or_none(batch)
