package deliver

import (
	"google.golang.org/protobuf/proto"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func cloneDelivery(d *mailbusv1.Delivery) *mailbusv1.Delivery {
	c := proto.Clone(d).(*mailbusv1.Delivery)
	if c.Envelope == nil {
		c.Envelope = &mailbusv1.Envelope{}
	}
	return c
}
