// Package pkg is the shared module of mailbus: generated protobuf code (gen),
// the Kafka bus (bus), the mail model (mail), observability (obs), the config
// client (configclient) and test helpers (testkit).
package pkg
