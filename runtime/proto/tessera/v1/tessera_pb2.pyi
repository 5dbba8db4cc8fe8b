from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawImage(_message.Message):
    __slots__ = ("width", "height", "rgb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rgb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("data", "fingerprint")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    fingerprint: str
    def __init__(self, data: _Optional[bytes] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("text", "image", "pixels", "vector")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    pixels: RawImage
    vector: Vector
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., pixels: _Optional[_Union[RawImage, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...

class Code(_message.Message):
    __slots__ = ("id", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    score: float
    def __init__(self, id: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "preprocess_ms", "inference_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("items", "top_codes", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_CODES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    top_codes: int
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., top_codes: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector", "codes")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    vector: bytes
    codes: _containers.RepeatedCompositeFieldContainer[Code]
    def __init__(self, vector: _Optional[bytes] = ..., codes: _Optional[_Iterable[_Union[Code, _Mapping]]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("fingerprint", "embed_dim", "embeddings", "timings", "request_id")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    embed_dim: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    timings: Timings
    request_id: str
    def __init__(self, fingerprint: _Optional[str] = ..., embed_dim: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("items", "top_k", "code_ids", "composed", "collection")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CODE_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPOSED_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    top_k: int
    code_ids: _containers.RepeatedScalarFieldContainer[int]
    composed: _containers.RepeatedCompositeFieldContainer[ComposedQuery]
    collection: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., top_k: _Optional[int] = ..., code_ids: _Optional[_Iterable[int]] = ..., composed: _Optional[_Iterable[_Union[ComposedQuery, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class CodeList(_message.Message):
    __slots__ = ("codes",)
    CODES_FIELD_NUMBER: _ClassVar[int]
    codes: _containers.RepeatedCompositeFieldContainer[Code]
    def __init__(self, codes: _Optional[_Iterable[_Union[Code, _Mapping]]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("fingerprint", "results", "code_vectors", "timings")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CODE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    results: _containers.RepeatedCompositeFieldContainer[CodeList]
    code_vectors: _containers.RepeatedScalarFieldContainer[bytes]
    timings: Timings
    def __init__(self, fingerprint: _Optional[str] = ..., results: _Optional[_Iterable[_Union[CodeList, _Mapping]]] = ..., code_vectors: _Optional[_Iterable[bytes]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_batch_size", "max_wait_ms", "max_queue", "max_items_per_request", "max_request_bytes", "max_image_pixels", "max_text_chars", "max_text_tokens")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_wait_ms: int
    max_queue: int
    max_items_per_request: int
    max_request_bytes: int
    max_image_pixels: int
    max_text_chars: int
    max_text_tokens: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_items_per_request: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_text_tokens: _Optional[int] = ...) -> None: ...

class PrecisionCheck(_message.Message):
    __slots__ = ("graph", "precision", "min_cosine", "threshold", "passed", "rows")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    graph: str
    precision: str
    min_cosine: float
    threshold: float
    passed: bool
    rows: int
    def __init__(self, graph: _Optional[str] = ..., precision: _Optional[str] = ..., min_cosine: _Optional[float] = ..., threshold: _Optional[float] = ..., passed: _Optional[bool] = ..., rows: _Optional[int] = ...) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("modality", "backend", "precision", "graph", "check", "note", "items_per_call")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    modality: str
    backend: str
    precision: str
    graph: str
    check: PrecisionCheck
    note: str
    items_per_call: int
    def __init__(self, modality: _Optional[str] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., graph: _Optional[str] = ..., check: _Optional[_Union[PrecisionCheck, _Mapping]] = ..., note: _Optional[str] = ..., items_per_call: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("fingerprint", "embed_dim", "codebook_size", "image_size_px", "text_max_tokens", "limits", "engines", "version", "cpu", "exported_on")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_SIZE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_PX_FIELD_NUMBER: _ClassVar[int]
    TEXT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_ON_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    embed_dim: int
    codebook_size: int
    image_size_px: int
    text_max_tokens: int
    limits: Limits
    engines: _containers.RepeatedCompositeFieldContainer[EngineInfo]
    version: str
    cpu: str
    exported_on: str
    def __init__(self, fingerprint: _Optional[str] = ..., embed_dim: _Optional[int] = ..., codebook_size: _Optional[int] = ..., image_size_px: _Optional[int] = ..., text_max_tokens: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., engines: _Optional[_Iterable[_Union[EngineInfo, _Mapping]]] = ..., version: _Optional[str] = ..., cpu: _Optional[str] = ..., exported_on: _Optional[str] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("id", "content", "payload_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: Item
    payload_json: str
    def __init__(self, id: _Optional[str] = ..., content: _Optional[_Union[Item, _Mapping]] = ..., payload_json: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "records", "vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    records: _containers.RepeatedCompositeFieldContainer[Record]
    vectors: VectorRecords
    def __init__(self, collection: _Optional[str] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., vectors: _Optional[_Union[VectorRecords, _Mapping]] = ...) -> None: ...

class VectorRecords(_message.Message):
    __slots__ = ("ids", "data", "payloads_json", "fingerprint")
    IDS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_JSON_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    data: bytes
    payloads_json: _containers.RepeatedScalarFieldContainer[str]
    fingerprint: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., data: _Optional[bytes] = ..., payloads_json: _Optional[_Iterable[str]] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("fingerprint", "upserted", "timings")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    upserted: int
    timings: Timings
    def __init__(self, fingerprint: _Optional[str] = ..., upserted: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter_json: str
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., filter_json: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "fingerprint", "timings")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    fingerprint: str
    timings: Timings
    def __init__(self, deleted: _Optional[int] = ..., fingerprint: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class QueryPart(_message.Message):
    __slots__ = ("item", "record_id", "weight")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    item: Item
    record_id: str
    weight: float
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., record_id: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ComposedQuery(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[QueryPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[QueryPart, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "nprobe", "filter_json", "parts", "offset", "queries")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: Item
    top_k: int
    nprobe: int
    filter_json: str
    parts: _containers.RepeatedCompositeFieldContainer[QueryPart]
    offset: int
    queries: _containers.RepeatedCompositeFieldContainer[SearchQuery]
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[_Union[Item, _Mapping]] = ..., top_k: _Optional[int] = ..., nprobe: _Optional[int] = ..., filter_json: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[QueryPart, _Mapping]]] = ..., offset: _Optional[int] = ..., queries: _Optional[_Iterable[_Union[SearchQuery, _Mapping]]] = ...) -> None: ...

class SearchQuery(_message.Message):
    __slots__ = ("query", "parts", "top_k", "nprobe", "filter_json", "offset")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    query: Item
    parts: _containers.RepeatedCompositeFieldContainer[QueryPart]
    top_k: int
    nprobe: int
    filter_json: str
    offset: int
    def __init__(self, query: _Optional[_Union[Item, _Mapping]] = ..., parts: _Optional[_Iterable[_Union[QueryPart, _Mapping]]] = ..., top_k: _Optional[int] = ..., nprobe: _Optional[int] = ..., filter_json: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("hits", "scored")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    scored: int
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., scored: _Optional[int] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "filter_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter_json: str
    def __init__(self, collection: _Optional[str] = ..., filter_json: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count", "fingerprint")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    count: int
    fingerprint: str
    def __init__(self, count: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class StoredRecord(_message.Message):
    __slots__ = ("id", "payload_json", "code", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    payload_json: str
    code: int
    vector: bytes
    def __init__(self, id: _Optional[str] = ..., payload_json: _Optional[str] = ..., code: _Optional[int] = ..., vector: _Optional[bytes] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("fingerprint", "records", "missing")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    records: _containers.RepeatedCompositeFieldContainer[StoredRecord]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fingerprint: _Optional[str] = ..., records: _Optional[_Iterable[_Union[StoredRecord, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRecordsRequest(_message.Message):
    __slots__ = ("collection", "limit", "cursor", "filter_json", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    limit: int
    cursor: str
    filter_json: str
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., filter_json: _Optional[str] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("fingerprint", "records", "next_cursor")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    records: _containers.RepeatedCompositeFieldContainer[StoredRecord]
    next_cursor: str
    def __init__(self, fingerprint: _Optional[str] = ..., records: _Optional[_Iterable[_Union[StoredRecord, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "payload_json", "code")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    payload_json: str
    code: int
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., payload_json: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("fingerprint", "hits", "timings", "scored", "results")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timings: Timings
    scored: int
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, fingerprint: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., scored: _Optional[int] = ..., results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "backend", "indexed_fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    indexed_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., indexed_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "backend", "count", "dim", "fingerprint", "indexed_fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    count: int
    dim: int
    fingerprint: str
    indexed_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., count: _Optional[int] = ..., dim: _Optional[int] = ..., fingerprint: _Optional[str] = ..., indexed_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
