-- Receipts travel in the update stream too, and each device remembers the
-- last pts it acknowledged (delivered receipts are computed from acks).
ALTER TABLE updates ADD COLUMN actor_id BLOB;
ALTER TABLE updates ADD COLUMN delivered_seq INTEGER;
ALTER TABLE updates ADD COLUMN read_seq INTEGER;
ALTER TABLE devices ADD COLUMN acked_pts INTEGER NOT NULL DEFAULT 0;
