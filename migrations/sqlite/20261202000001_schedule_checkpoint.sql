-- The embedded mode's schedule watermark (the distributed mode keeps it in Redis): one row,
-- saved by the leading scheduler with its lease's fencing token, never moved backwards, so a
-- restart resumes the schedule where it stopped and the catch-up policy handles the gap.

CREATE TABLE schedule_checkpoint (
    id             INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    fencing_token  INTEGER NOT NULL,
    watermark      INTEGER NOT NULL
) STRICT;
