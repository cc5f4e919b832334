-- Sign-up mode `open` (development) shows codes to the operator: the code
-- itself is kept next to its hash so `natter admin codes` can list it. In
-- modes `sms` and `invite` it stays NULL: only the hash is stored.
ALTER TABLE verification_codes ADD COLUMN shown_code TEXT;
