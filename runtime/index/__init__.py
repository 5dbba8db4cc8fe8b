"""Collections of vectors the server can search (docs/architecture.md §5).

    base.py      the `Collection` protocol, records, hits, name and limit checks
    wal.py       the write-ahead log (CRC-framed records) and snapshots of the built-in collection
    builtin.py   the embedded default: exact and codebook-routed search over numpy, durable on disk
    milvus.py    the same behaviour on Milvus through pymilvus (milvus-lite embedded, or a cluster)
    registry.py  the collections of a data directory: create, open at start, list, drop

Codebook routing: a vector lives in the list of its top code (the learned codebook of CODIS is the
coarse quantizer, as k-means centroids are for an IVF index); a query scores its `nprobe` best codes
and searches only their lists. nprobe = 0 is exact search.
"""
