"""Files made from instances rather than fetched: previews, NIfTI conversions, de-identified copies.

Each is made once, on the first ``open``, and kept in the instance cache under a key of its own
(:mod:`trolleyfs.derived.store`), so the same LRU evicts it; the modules beside the store hold the
work itself (pixels to PNG, dcm2niix, de-identification) and know nothing of the filesystem.
"""
