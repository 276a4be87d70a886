"""Book features from OrderbookEntry batches, vectorised over the batch: the arithmetic, no I/O.

Per valid book (``BOOK_FLAG_INVALID`` clear, at least one level on each side, finite and positive
best prices and sizes, best bid < best ask; anything else is skipped and counted under its reason:
flags == 0 alone is no proof a book can be traded on):

    mid         (best_bid + best_ask) / 2
    spread      best_ask - best_bid;  spread_bps = spread / mid * 1e4
    microprice  (best_bid * ask_size + best_ask * bid_size) / (bid_size + ask_size)   (top level)
    imbalance   (B - A) / (B + A), B and A the summed sizes of the top ``top_n`` filled levels
                of each side (fewer when a side has fewer): +1 all bids, -1 all asks
    volatility  sample standard deviation (ddof 1) of the last ``vol_window`` log returns of
                the mid, per symbol, over consecutive valid books (not annualised; NaN until
                ``vol_window`` returns have been seen)

Prices are the book's exact f64 values (OrderbookEntry layout version 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shmpipe.records import BOOK_FLAG_INVALID, ORDERBOOK_DEPTH

FEATURES = np.dtype([
    ("symbol_id", "<u4"), ("timestamp_ns", "<u8"), ("sequence", "<u4"),
    ("mid", "<f8"), ("spread", "<f8"), ("spread_bps", "<f8"), ("microprice", "<f8"),
    ("imbalance", "<f8"), ("volatility", "<f8"),
])


@dataclass
class Skipped:
    invalid: int = 0        # BOOK_FLAG_INVALID set
    empty_side: int = 0     # no bid or no ask level (or a non-positive best price or size)
    not_finite: int = 0     # a best price or size is inf or NaN
    crossed: int = 0        # best bid >= best ask

    def as_dict(self) -> dict[str, int]:
        return {"invalid": self.invalid, "empty_side": self.empty_side, "not_finite": self.not_finite,
                "crossed": self.crossed}


class FeatureEngine:
    def __init__(self, *, top_n: int = 5, vol_window: int = 100) -> None:
        if not 1 <= top_n <= ORDERBOOK_DEPTH:
            raise ValueError(f"top_n must be 1..{ORDERBOOK_DEPTH}, not {top_n}")
        if vol_window < 2:
            raise ValueError(f"vol_window must be >= 2 returns, not {vol_window}")
        self.top_n = top_n
        self.vol_window = vol_window
        self.books = 0              # valid books turned into features
        self.skipped = Skipped()
        # symbol_id -> the last vol_window log mids (the returns window needs one more mid than returns)
        self._log_mids: dict[int, np.ndarray] = {}

    def update(self, books: np.ndarray) -> np.ndarray:
        """Features of every valid book in the batch, in batch order (FEATURES dtype)."""
        invalid = (books["flags"] & BOOK_FLAG_INVALID) != 0
        bid_px = books["bids"][:, 0, 0]
        bid_sz = books["bids"][:, 0, 1]
        ask_px = books["asks"][:, 0, 0]
        ask_sz = books["asks"][:, 0, 1]
        finite = np.isfinite(bid_px) & np.isfinite(ask_px) & np.isfinite(bid_sz) & np.isfinite(ask_sz)
        has_sides = (books["bid_count"] > 0) & (books["ask_count"] > 0) & (bid_px > 0) & (ask_px > 0) \
            & (bid_sz > 0) & (ask_sz > 0)
        ordered = bid_px < ask_px
        self.skipped.invalid += int(np.count_nonzero(invalid))
        self.skipped.not_finite += int(np.count_nonzero(~invalid & ~finite))
        self.skipped.empty_side += int(np.count_nonzero(~invalid & finite & ~has_sides))
        self.skipped.crossed += int(np.count_nonzero(~invalid & finite & has_sides & ~ordered))
        valid = ~invalid & finite & has_sides & ordered
        if not valid.all():
            books = books[valid]
            bid_px, bid_sz, ask_px, ask_sz = bid_px[valid], bid_sz[valid], ask_px[valid], ask_sz[valid]
        n = len(books)
        out = np.empty(n, FEATURES)
        if n == 0:
            return out
        self.books += n
        bid, ask = bid_px.astype(np.float64), ask_px.astype(np.float64)
        bsz, asz = bid_sz.astype(np.float64), ask_sz.astype(np.float64)
        out["symbol_id"] = books["symbol_id"]
        out["timestamp_ns"] = books["timestamp_ns"]
        out["sequence"] = books["sequence"]
        mid = (bid + ask) / 2
        out["mid"] = mid
        out["spread"] = ask - bid
        out["spread_bps"] = (ask - bid) / mid * 1e4
        out["microprice"] = (bid * asz + ask * bsz) / (bsz + asz)
        levels = np.arange(self.top_n)
        bid_mask = levels < books["bid_count"][:, None]
        ask_mask = levels < books["ask_count"][:, None]
        bid_depth = np.where(bid_mask, books["bids"][:, :self.top_n, 1], 0).astype(np.float64).sum(axis=1)
        ask_depth = np.where(ask_mask, books["asks"][:, :self.top_n, 1], 0).astype(np.float64).sum(axis=1)
        out["imbalance"] = (bid_depth - ask_depth) / (bid_depth + ask_depth)
        out["volatility"] = self._volatility(out["symbol_id"], np.log(mid))
        return out

    def _volatility(self, sids: np.ndarray, log_mid: np.ndarray) -> np.ndarray:
        """Per book, the std of the vol_window returns ending at it, all books in one gather: each
        symbol's kept log mids and its new ones are laid end to end in one flat array, and every
        book's window is a row of indices into that array's differences."""
        w = self.vol_window
        order = np.argsort(sids, kind="stable")
        sorted_sids = sids[order]
        heads = np.flatnonzero(np.r_[True, sorted_sids[1:] != sorted_sids[:-1]])
        tails = np.append(heads[1:], len(order))
        pieces, at, first = [], np.empty(len(order), np.int64), np.empty(len(order), np.int64)
        flat_len = 0
        for head, tail in zip(heads.tolist(), tails.tolist()):
            sid = int(sorted_sids[head])
            history = self._log_mids.get(sid)
            kept = 0 if history is None else len(history)
            new = log_mid[order[head:tail]]       # this symbol's books, in batch order
            if kept:
                pieces.append(history)
            pieces.append(new)
            at[head:tail] = flat_len + kept + np.arange(tail - head)   # each book's place in the flat array
            first[head:tail] = flat_len                                # where its symbol's piece starts
            self._log_mids[sid] = (new if not kept else np.concatenate((history, new)))[-w:]
            flat_len += kept + tail - head
        flat = np.concatenate(pieces)
        returns = np.diff(flat)                   # returns[k] = flat[k + 1] - flat[k]
        full = at - first >= w                    # w returns, all within the symbol, end at this book
        vol_sorted = np.full(len(order), np.nan)
        if full.any():
            view = sliding_window_view(returns, w)        # row k: returns[k:k + w], no copy
            rows = at[full] - w
            # Mostly new books (large batches): the std of every row, then pick. Mostly kept
            # history (small batches, many symbols): gather only the rows wanted first.
            vol_sorted[full] = view.std(axis=1, ddof=1)[rows] if 2 * len(rows) >= len(view) \
                else view[rows].std(axis=1, ddof=1)
        vol = np.empty(len(order))
        vol[order] = vol_sorted
        return vol


def latest_per_symbol(features: np.ndarray) -> np.ndarray:
    """The last row of each symbol in the batch (what gets published), in symbol order."""
    if len(features) == 0:
        return features
    rev = features[::-1]
    _, first_in_rev = np.unique(rev["symbol_id"], return_index=True)
    return rev[first_in_rev]


__all__ = ["FEATURES", "FeatureEngine", "Skipped", "latest_per_symbol"]
