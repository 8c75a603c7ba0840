"""Array inputs of ``gpuloss eval``: ``.npy``, ``.npz``, ``.parquet`` and ``.csv`` files, read
whole or in chunks of rows along the first (batch) axis.

An input is written ``FILE`` or ``FILE:COLUMNS``:

- ``.npy``: the stored array, memory-mapped (files larger than memory are read chunk by chunk);
  no columns.
- ``.npz``: ``FILE:NAME`` picks a member; without it, the member named like the input
  (``y_true``, ``y_pred``, ``sample_weight``...) or the only one. A member is read whole
  (members of a zip archive, compressed or not, cannot be memory-mapped), then cut in chunks.
- ``.parquet`` / ``.pq`` (needs pyarrow): ``FILE:COL`` is one value per row, ``FILE:C1,C2,...``
  puts several columns side by side as the class axis, ``FILE:PREFIX*`` takes every column that
  matches (in file order), and a list column gives the class axis by itself. Read in record
  batches.
- ``.csv`` (needs pyarrow): the same column syntax (no list columns); values are parsed as
  numbers and stored as float32, as lists of Python floats become float32 arrays. Streamed in
  blocks.

Without ``:COLUMNS``, a table uses the column named like the input, or its only column. A
single column is read as shape ``(n, 1)`` (one value per sample; Keras's shape for one output),
except for ``sample_weight``, which is read as ``(n,)``.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from typing import Iterable, Iterator

import numpy as np

__all__ = ["InputError", "Source", "open_source", "rechunk", "FORMATS"]

FORMATS = (".npy", ".npz", ".parquet", ".pq", ".csv")


class InputError(Exception):
    """A file, column or format problem, with a message that names the input and the file."""


class Source:
    """One input: its number of rows (None until read, for CSV), the shape of a row, its dtype,
    and its rows whole or in chunks."""

    def __init__(self, role: str, path: str, columns: list[str] | None):
        self.role, self.path, self.columns = role, path, columns
        self.rows: int | None = None
        self.row_shape: tuple[int, ...] = ()
        self.dtype = np.dtype(np.float32)
        self.scalar = False  # a 0-d array: no batch axis, not cut in chunks

    @property
    def where(self) -> str:
        cols = f":{','.join(self.columns)}" if self.columns else ""
        return f"{self.role} ({self.path}{cols})"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """Blocks of rows of any length (about ``size``), in order."""
        raise NotImplementedError

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Chunks of exactly ``size`` rows (the last one shorter)."""
        return rechunk(self.blocks(size), size)

    def read_all(self) -> np.ndarray:
        parts = list(self.blocks(1 << 20))
        if not parts:
            return np.zeros((0,) + self.row_shape, self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _error(self, message: str) -> InputError:
        return InputError(f"{self.where}: {message}")


class _ArraySource(Source):
    """An array in memory or memory-mapped (.npy, .npz member)."""

    def _set_array(self, array: np.ndarray) -> None:
        if array.dtype.kind not in "fiub":
            raise self._error(f"holds {array.dtype} values, not numbers")
        self.array = array
        self.dtype = array.dtype
        if array.ndim == 0:
            self.scalar = True
            self.rows, self.row_shape = None, ()
        else:
            self.rows, self.row_shape = array.shape[0], array.shape[1:]

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        if self.scalar:
            yield np.asarray(self.array)
            return
        for start in range(0, self.rows, size):
            yield np.asarray(self.array[start:start + size])  # a view of the mapped file

    def read_all(self) -> np.ndarray:
        return np.asarray(self.array)


class NpySource(_ArraySource):
    def __init__(self, role: str, path: str, columns: list[str] | None):
        super().__init__(role, path, columns)
        if columns:
            raise self._error(".npy files have no columns (use .npz members or a table)")
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise self._error("cannot read as .npy: not an .npy file (no .npy header)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise self._error(f"cannot read as .npy: {_first_line(exc)}") from None
        if not isinstance(array, np.ndarray):
            raise self._error("cannot read as .npy: not an .npy array")
        self._set_array(array)


class NpzSource(_ArraySource):
    def __init__(self, role: str, path: str, columns: list[str] | None):
        super().__init__(role, path, columns)
        if not zipfile.is_zipfile(path):
            raise self._error("cannot read as .npz: not a zip archive")
        try:
            archive = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise self._error(f"cannot read as .npz: {_first_line(exc)}") from None
        if not hasattr(archive, "files"):
            raise self._error("cannot read as .npz: not an .npz archive")
        with archive:
            names = list(archive.files)
            if columns and len(columns) > 1:
                raise self._error("name one member of an .npz archive")
            if columns:
                name = columns[0]
            elif role in names:
                name = role
            elif len(names) == 1:
                name = names[0]
            else:
                raise self._error(f"choose a member with FILE:NAME; the archive holds {_listing(names)}")
            if name not in names:
                raise self._error(f"no member {name!r}; the archive holds {_listing(names)}")
            try:
                array = archive[name]
            except (ValueError, OSError, EOFError) as exc:
                raise self._error(f"cannot read member {name!r}: {_first_line(exc)}") from None
        self.columns = [name]
        self._set_array(array)


class _TableSource(Source):
    """Columns of a Parquet or CSV file (pyarrow)."""

    list_columns = True

    def _select(self, names: list[str]) -> None:
        if not self.columns:
            if self.role in names:
                chosen = [self.role]
            elif len(names) == 1:
                chosen = names
            else:
                raise self._error(f"choose columns with FILE:COLUMN[,COLUMN...]; the file has {_listing(names)}")
        else:
            chosen = []
            for col in self.columns:
                if any(ch in col for ch in "*?["):
                    matched = [n for n in names if fnmatch.fnmatchcase(n, col)]
                    if not matched:
                        raise self._error(f"no column matches {col!r}; the file has {_listing(names)}")
                    chosen += matched
                elif col in names:
                    chosen.append(col)
                else:
                    raise self._error(f"no column {col!r}; the file has {_listing(names)}")
        self.columns = chosen

    def _to_numpy(self, arrays: list) -> np.ndarray:
        """One block: the selected columns (pyarrow arrays) as an (n, k) or (n,) NumPy array."""
        import pyarrow as pa

        for name, arr in zip(self.columns, arrays):
            if arr.null_count:
                raise self._error(f"column {name!r} has missing values")
        if len(arrays) == 1 and _is_list(arrays[0].type):
            arr = arrays[0]
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            n = len(arr)
            values = arr.flatten()
            if values.null_count:
                raise self._error(f"column {self.columns[0]!r} has missing values inside its lists")
            flat = values.to_numpy(zero_copy_only=False)
            if n == 0:
                return flat.reshape(0, self.row_shape[0] if self.row_shape else 0)
            ragged = flat.size % n != 0
            if not ragged and not pa.types.is_fixed_size_list(arr.type):
                ragged = np.unique(np.diff(arr.offsets.to_numpy())).size > 1
            if ragged or (self.row_shape and flat.size // n != self.row_shape[0]):
                raise self._error(f"list column {self.columns[0]!r} has lists of different lengths")
            out = flat.reshape(n, flat.size // n)
        else:
            cols = [a.to_numpy(zero_copy_only=False) for a in arrays]
            out = cols[0].reshape(-1, 1) if len(cols) == 1 else np.column_stack(cols)
        if out.dtype.kind not in "fiub":
            raise self._error(f"columns {_listing(self.columns)} are not numeric ({out.dtype})")
        if self.role == "sample_weight" and out.ndim == 2 and out.shape[1] == 1:
            out = out.reshape(-1)
        return out

    def _check_types(self, schema) -> None:
        import pyarrow as pa

        for name in self.columns:
            typ = schema.field(name).type
            if _is_list(typ):
                if not self.list_columns or len(self.columns) > 1:
                    raise self._error(f"list column {name!r} must be the only column of the input")
                typ = typ.value_type
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
                raise self._error(f"column {name!r} holds {typ}, not numbers")


class ParquetSource(_TableSource):
    def __init__(self, role: str, path: str, columns: list[str] | None):
        super().__init__(role, path, columns)
        pq = _pyarrow(self, "parquet")
        try:
            self.file = pq.ParquetFile(path)
            schema = self.file.schema_arrow
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
            raise self._error(f"cannot read as Parquet: {_first_line(exc)}") from None
        self._select(list(schema.names))
        self._check_types(schema)
        self.rows = self.file.metadata.num_rows
        import pyarrow as pa

        types = [schema.field(n).type for n in self.columns]
        if len(types) == 1 and _is_list(types[0]):
            size = types[0].list_size if pa.types.is_fixed_size_list(types[0]) else None
            if size is None:  # variable lists: the first row says how long
                first = next(self.file.iter_batches(batch_size=1, columns=self.columns), None)
                size = len(first.column(0)[0]) if first is not None and first.num_rows else 0
            self.row_shape = (size,)
            self.dtype = np.dtype(types[0].value_type.to_pandas_dtype())
        else:
            dts = [np.dtype(t.to_pandas_dtype()) for t in types]
            self.dtype = np.result_type(*dts)
            self.row_shape = () if role == "sample_weight" and len(types) == 1 else (len(types),)

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        try:
            # record batches of at most 1M rows (pyarrow decodes list columns slower in larger ones)
            for batch in self.file.iter_batches(batch_size=min(size, 1 << 20), columns=self.columns):
                yield self._to_numpy([batch.column(i) for i in range(batch.num_columns)])
        except InputError:
            raise
        except Exception as exc:
            raise self._error(f"cannot read as Parquet: {_first_line(exc)}") from None


class CsvSource(_TableSource):
    list_columns = False

    def __init__(self, role: str, path: str, columns: list[str] | None):
        super().__init__(role, path, columns)
        csv = _pyarrow(self, "csv")
        try:
            reader = csv.open_csv(path)
            names = list(reader.schema.names)
        except Exception as exc:
            raise self._error(f"cannot read as CSV: {_first_line(exc)}") from None
        self._select(names)
        self.dtype = np.dtype(np.float32)
        self.row_shape = () if role == "sample_weight" and len(self.columns) == 1 else (len(self.columns),)

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        import pyarrow as pa

        csv = _pyarrow(self, "csv")
        # blocks of about `size` rows: pyarrow sizes its blocks in bytes
        block_size = int(min(max(size * 16 * max(len(self.columns), 1), 1 << 16), 1 << 30))
        try:
            reader = csv.open_csv(
                self.path, read_options=csv.ReadOptions(block_size=block_size),
                convert_options=csv.ConvertOptions(include_columns=self.columns,
                                                   column_types={c: pa.float64() for c in self.columns}))
            for batch in reader:
                out = self._to_numpy([batch.column(i) for i in range(batch.num_columns)])
                yield out.astype(np.float32)
        except InputError:
            raise
        except Exception as exc:
            raise self._error(f"cannot read as CSV: {_first_line(exc)}") from None


def open_source(text: str, role: str) -> Source:
    """The input ``FILE`` or ``FILE:COLUMNS`` for ``role`` (y_true, y_pred, sample_weight...)."""
    path, columns = _split(text)
    ext = _extension(path)
    kinds = {".npy": NpySource, ".npz": NpzSource, ".parquet": ParquetSource, ".pq": ParquetSource,
             ".csv": CsvSource}
    where = f"{role} ({text})"
    if not os.path.exists(path):
        raise InputError(f"{where}: no such file: {path}")
    if os.path.isdir(path):
        raise InputError(f"{where}: {path} is a directory, not a file")
    if ext not in kinds:
        raise InputError(f"{where}: unreadable format {ext or '(no extension)'!r}; "
                         f"expected one of {', '.join(FORMATS)}")
    return kinds[ext](role, path, columns)


def rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Blocks of rows of any length, regrouped into chunks of exactly ``size`` rows (the last
    one shorter); a 0-d block passes through as it is."""
    buf: list[np.ndarray] = []
    have = 0
    for block in blocks:
        if block.ndim == 0:
            yield block
            continue
        while len(block):
            take = min(size - have, len(block))
            buf.append(block[:take])
            have += take
            block = block[take:]
            if have == size:
                yield buf[0] if len(buf) == 1 else np.concatenate(buf)
                buf, have = [], 0
    if have:
        yield buf[0] if len(buf) == 1 else np.concatenate(buf)


# ---- helpers ----------------------------------------------------------------------------------

def _split(text: str) -> tuple[str, list[str] | None]:
    """``FILE[:COL[,COL...]]``: the path, and the columns if any (a path that exists as
    written, colons included, has none)."""
    if os.path.exists(text) or ":" not in text:
        return text, None
    path, _, cols = text.rpartition(":")
    names = [c.strip() for c in cols.split(",")]
    if not all(names):
        return path, [c for c in names if c] or None
    return path, names


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _is_list(typ) -> bool:
    import pyarrow as pa

    return pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)


def _pyarrow(source: Source, module: str):
    try:
        if module == "parquet":
            import pyarrow.parquet as mod
        else:
            import pyarrow.csv as mod
    except ImportError:
        raise source._error(f"reading {_extension(source.path)} files needs pyarrow "
                            "(pip install 'gpuloss[cli]')") from None
    return mod


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "nothing"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
