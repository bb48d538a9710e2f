-- The dispatch attempt is persisted before the backend is called: `dispatch_sent_at` (database time,
-- ms since the epoch) says a dispatch may have gone out whose outcome is not recorded. Whoever tracks
-- the build next (this replica after a failed call, another after a takeover) waits the backend's
-- settle time after it and looks the run up by build id before it sends again.
ALTER TABLE builds ADD COLUMN dispatch_sent_at BIGINT;

-- Builds left in `dispatching` by a version without this column: a counted attempt was made at the
-- latest update.
UPDATE builds SET dispatch_sent_at = updated_at WHERE state = 'dispatching' AND dispatch_attempts > 0;
