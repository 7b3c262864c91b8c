-- A delivery's message row is written in the same statement as the delivery and never
-- deleted, so the foreign key from deliveries to notified_messages checks nothing the
-- store does not already guarantee, at the price of a lookup per inserted delivery (seven
-- or more per message). The ON DELETE CASCADE it carried had no deleter.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_chat_id_seq_fkey;
