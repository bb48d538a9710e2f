-- A driver version is a tag of the driver's repository; the commit it named when the build was
-- reserved is stored with the build and the build is made from exactly that commit, whatever the
-- tag names later. NULL only for builds reserved before this column existed.
ALTER TABLE builds ADD COLUMN source_commit TEXT;
