// Package store is the tracker's message log: every DeliveryEvent that the
// pipeline publishes to mail.events, and the state of each message and
// recipient that follows from them, in SQL (SQLite or PostgreSQL through
// pkg/sqlstore, one code path).
//
// # Applying events
//
// Events arrive at least once and, because stages publish to different
// partitions, in any order: a recipient's `sent` may be read before the
// `queued` that announced the message. The store therefore defines the state
// of a recipient as a fold over the message's events sorted by position,
// (occur_time, event_id), rather than by arrival. Whatever order the events
// come in, the state is the same as if they had arrived sorted:
//
//   - An event is recorded once, keyed by event_id; a redelivered event is
//     ignored and changes nothing.
//   - When every new event of a recipient is later than the last one folded
//     into it (the normal case), the new events are folded onto the stored
//     state. Otherwise the recipient is re-folded from the message's stored
//     events. A recipient that first appears after events that apply to all
//     recipients (see below) is also re-folded, so that it gets them.
//   - An event with an empty recipient list applies to every recipient of
//     the message, including those named later by a MessageSummary.
//
// One fold step (see step) takes the state so far and the next event:
//
//   - Transient statuses are queued and deferred. A soft bounce (bounced
//     with permanent=false) is transient too and shows as deferred: the
//     remote side is still trying.
//   - Final statuses are sent, bounced (hard), complained, failed,
//     suppressed and cancelled.
//   - A transient event replaces a transient state and never a final one.
//     The exception is a soft bounce after sent: the recipient stays sent,
//     and the bounce's reason and detail are kept as a note.
//   - A final event replaces a transient state. Between two final states the
//     later one wins (sent followed by a hard bounce or a complaint becomes
//     bounced or complained), except that cancelled never replaces a final
//     state (cancelling only stops what has not happened yet) and sent never
//     replaces bounced or complained (a bounce is news about a message that
//     was already sent, so a later sent only means that the clocks of the
//     two stages disagree).
//   - A retry that the tracker records (stage "tracker", reason
//     ReasonRetryRequested, status queued) puts failed and bounced
//     recipients back to queued and leaves the others alone.
//   - Events with status unspecified (warnings) only go into the history.
//
// Ties of occur_time are broken by event_id so that the order is total and
// the fold deterministic.
//
// # Overall status
//
// A message's status is the least final state among its recipients, in this
// order (least final first): queued, deferred, sent, suppressed, cancelled,
// failed, bounced, complained. Sent comes before the other final states
// because it can still turn into bounced or complained; the order of the
// rest is by how much the remote side had to say. Recipients without any
// status (named by a summary but not yet by an event) do not count; a
// message without any recipient status is unspecified. The store keeps a
// count of recipients per status on the message row so that an event does
// not scan the recipients of a large message.
//
// # Transactions and concurrency
//
// Apply runs one transaction per event; ApplyBatch runs one transaction for
// many events: the events go in with multi-row inserts (the unique event_id
// drops repeats), then the new ones are grouped by message so that a
// message and its recipients are read and written once per batch. On
// SQLite, statement preparation is most of the cost of an event, so
// batching is what makes the consumer fast (see BenchmarkApplyBatch_SQLite).
//
// On PostgreSQL several consumers may apply events of the same message at
// once. Each message row is locked (SELECT ... FOR UPDATE, created first if
// missing) before its recipients are read, so no update is lost; events are
// inserted in event-id order and messages locked in message-id order, so
// two transactions never wait for each other in a cycle. SQLite has one
// writer at a time and needs none of this.
//
// Re-folding reads the whole history of the message; that is cheap for the
// usual message and costs more only for large messages whose events arrive
// out of order.
//
// # Submissions
//
// For RetryMessage the store also keeps each message's original
// Submission (tracker_submissions): protobuf compressed with zstd, keyed by
// message id, first one wins, with the time it may be kept until.
// Submission refuses one past that time with a *RetentionError even before
// PurgeSubmissions deletes it, so a retry's answer does not depend on when
// the sweep last ran.
package store
