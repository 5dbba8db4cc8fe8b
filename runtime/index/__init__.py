"""Collections of vectors the server can search (docs/architecture.md §5).

    base.py      the `Collection` protocol, records, hits, name and limit checks
    filters.py   payload filters: the dialect parsed, evaluated (three-valued), translated for Milvus
    wal.py       the write-ahead log (CRC-framed records) and snapshots of the built-in collection
    builtin.py   the embedded default: exact and codebook-routed search, durable on disk
    scan.py      its scan kernel (FAISS's SIMD loop or numpy BLAS) and the one-thread-per-scan policy
    rwlock.py    many searches at once or one writer, first come first served
    milvus.py    the same behaviour on Milvus through pymilvus (milvus-lite embedded, or a cluster)
    registry.py  the collections of a data directory: create, open at start, list, drop

Codebook routing: a vector lives under its top code (the learned codebook of CODIS is the coarse
quantizer, as k-means centroids are for an IVF index); a code grown large is split into sub-lists
(builtin.py). A query ranks the lists and searches only its `nprobe` best. nprobe = 0 is exact search.
"""
