"""The filesystem: naming and inodes (tree), operations (core), and the pyfuse3 adapter (fuse)."""
