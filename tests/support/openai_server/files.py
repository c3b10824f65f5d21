"""The Files API of the test server: upload (batch input files must be `.jsonl`), list (cursor
pages, newest first), retrieve, content and delete."""

from __future__ import annotations

from tests.support.openai_server.core import ServerCore
from tests.support.openai_server.records import StoredFile
from tests.support.openai_server.wire import ApiError, JsonObject, cursor_page


class FilesStore(ServerCore):
    """Uploaded and batch-output files, kept in memory."""

    def upload(self, filename: str, purpose: str, data: bytes) -> JsonObject:
        allowed = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
        if purpose not in allowed:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        stored = StoredFile(self._new_id("file-"), filename, purpose, data, int(self.clock.now()))
        self.files[stored.id] = stored
        return stored.object()

    def get_file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None or stored.deleted:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def list_files(self, query: dict[str, str]) -> JsonObject:
        items = [f for f in self.files.values() if not f.deleted]
        if "purpose" in query:
            items = [f for f in items if f.purpose == query["purpose"]]
        order = query.get("order", "desc")
        items.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        return cursor_page(
            items,
            query,
            default_limit=self.files_page_limit,
            max_limit=10_000,
            view=StoredFile.object,
        )

    def delete_file(self, file_id: str) -> JsonObject:
        self.get_file(file_id).deleted = True
        return {"id": file_id, "object": "file", "deleted": True}
