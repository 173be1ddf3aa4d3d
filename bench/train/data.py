"""Where the training images live, and how a batch of them reaches the device.

Three places, decided once per run from the images' size and the free memory:

  device  one tensor in GPU memory: a batch is an index_select, nothing crosses the bus.
  host    one tensor in RAM (pinned on CUDA): a batch is gathered there and copied over.
  mmap    the decode cache's memory map on disk: a batch is gathered from the map, so a
          dataset larger than RAM trains; the pages read are dropped again after every batch.

For host and mmap a one-batch-ahead Prefetcher gathers (and on CUDA pins and copies) the
next batch on a background thread while the current one computes; augmentation stays on
the main thread, so the random stream, and hence every result, is the same in all three.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

PLACEMENTS = ("auto", "device", "host", "mmap")

# Images may take this share of free GPU memory (the model, activations and the optimizer
# need the rest), and this share of available RAM (the process, torch and the OS need theirs).
DEVICE_SHARE = 0.25
HOST_SHARE = 0.5


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def decide_placement(
    nbytes: int,
    device: torch.device,
    requested: str = "auto",
    memory_budget_mb: float | None = None,
) -> tuple[str, str]:
    """(placement, reason). `memory_budget_mb` stands for the available RAM when given."""
    mb = nbytes / 2**20
    ram = memory_budget_mb * 2**20 if memory_budget_mb else available_ram_bytes()
    ram_what = f"--memory-budget-mb {memory_budget_mb:g}" if memory_budget_mb else "available RAM"
    if requested != "auto":
        if requested == "device" and device.type == "cpu":
            return "host", "forced by --data-placement device; on CPU the device memory is RAM"
        return requested, f"forced by --data-placement {requested} (images {mb:.1f} MB)"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= DEVICE_SHARE * free:
            return "device", (
                f"images {mb:.1f} MB <= {DEVICE_SHARE:.0%} of free GPU memory "
                f"({free / 2**20:.0f} MB)"
            )
    if nbytes <= HOST_SHARE * ram:
        return (
            "host",
            f"images {mb:.1f} MB <= {HOST_SHARE:.0%} of {ram_what} ({ram / 2**20:.0f} MB)",
        )
    return "mmap", (
        f"images {mb:.1f} MB > {HOST_SHARE:.0%} of {ram_what} ({ram / 2**20:.0f} MB): "
        "read batches from the decode cache's memory map"
    )


def return_big_frees_to_the_os() -> None:
    """glibc raises its mmap threshold after big frees, so batch-sized tensors (MBs) then come
    from a heap that fragments and keeps growing over an epoch (measured: +40 MB over one
    epoch of 128 px batches). With images on a map because RAM is short, pin the threshold at
    1 MB: big tensors are mmapped and returned to the OS when freed. Best effort, glibc only."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def place_images(ds, placement: str, device: torch.device, chunk_bytes: int = 8 << 20):
    """The dataset's images where `placement` says, copied a chunk at a time so the map's
    pages never pile up in RAM on the way."""
    images = ds.images
    if placement == "mmap":
        return_big_frees_to_the_os()
        return images
    pin = placement == "host" and device.type == "cuda"
    target = device if placement == "device" else torch.device("cpu")
    out = torch.empty(images.shape, dtype=images.dtype, device=target, pin_memory=pin)
    chunk = max(1, chunk_bytes // max(1, images[0].numel()))
    for start in range(0, len(images), chunk):
        out[start : start + chunk].copy_(images[start : start + chunk])
        ds.release_pages()
    return out


class Gather:
    """Rows of `images` (device, RAM or map) for index tensors, as uint8 on `device`."""

    def __init__(self, ds, images: torch.Tensor, device: torch.device, on_device: bool):
        self.ds, self.images, self.device, self.on_device = ds, images, device, on_device
        self.pin = device.type == "cuda"

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.on_device:
            return self.images.index_select(0, idx)
        # Sorted rows read the map (or RAM) front to back; `inverse` restores the batch order.
        order, perm = idx.sort()
        rows = self.images.index_select(0, order)
        self.ds.release_pages()
        rows = rows.index_select(0, perm.argsort())
        if self.pin:
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows


class Prefetcher:
    """Iterate gather(i) for a list of index tensors, preparing batch k+1 on a background
    thread while batch k is used. Without `background`, gathers inline."""

    def __init__(self, gather, batches: list[torch.Tensor], background: bool):
        self.gather, self.batches = gather, batches
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if background else None

    def __iter__(self):
        if self.pool is None:
            for idx in self.batches:
                yield self.gather(idx)
            return
        try:
            pending = self.pool.submit(self.gather, self.batches[0]) if self.batches else None
            for k in range(len(self.batches)):
                current = pending.result()
                if k + 1 < len(self.batches):
                    pending = self.pool.submit(self.gather, self.batches[k + 1])
                yield current
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
