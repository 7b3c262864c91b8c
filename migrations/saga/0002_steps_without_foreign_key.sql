-- A step is logged only by the orchestrator that created or claimed its saga (the saga's
-- creation and its first step are one statement), and sagas are never deleted, so the
-- foreign key from saga_steps to sagas checks nothing the store does not already
-- guarantee, at the price of a lookup and a row lock on the saga for every step logged
-- (three or more per saga). The ON DELETE CASCADE it carried had no deleter.
ALTER TABLE saga_steps DROP CONSTRAINT IF EXISTS saga_steps_saga_id_fkey;
