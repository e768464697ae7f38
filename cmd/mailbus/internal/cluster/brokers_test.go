package cluster_test

import (
	"testing"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// testBrokers is the broker the cluster tests run on.
func testBrokers(t testing.TB) []string {
	return testkit.StartBroker(t)
}
