-- Weights cache (issue 6). models.source may now be a URI (file:///dir, http(s)://host/dir/) as
-- well as a directory present on every host; manifest lists the checkpoint's files with their size
-- and sha256 ({"files":[{"path":"config.json","size":N,"sha256":"…"},…]}), which agents fetch
-- into their cache and verify. NULL: no manifest (a local directory used where it is).
ALTER TABLE models ADD COLUMN manifest jsonb;
