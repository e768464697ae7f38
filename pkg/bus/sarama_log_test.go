package bus_test

import (
	"log"
	"os"

	"github.com/IBM/sarama"
)

// SARAMA_DEBUG=1 go test -v ./bus/ shows sarama's own log (joins,
// rebalances, session ends), which is where consumer group trouble shows
// first. Sarama only has a package-level logger.
func init() {
	if os.Getenv("SARAMA_DEBUG") != "" {
		sarama.Logger = log.New(os.Stderr, "[sarama] ", log.Lmicroseconds)
	}
}
