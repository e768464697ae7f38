// Command quota runs the mailbus quota stage. Environment: see pkg/svcenv,
// and for the complaint guardrail MAILBUS_COMPLAINT_RATE_LIMIT (default
// 0.003, i.e. 0.3%; "off" disables it) and MAILBUS_COMPLAINT_MIN_VOLUME
// (default 1000), see pkg/complaints.
package main

import (
	"context"
	"os"

	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/quota"
)

func main() { svcenv.Main("quota", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	policy, err := complaints.PolicyFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Config: true, Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	svc, closeSvc, err := quota.NewApplication(ctx, quota.Config{Bus: env.Bus, Complaints: policy}, in)
	if err != nil {
		return err
	}
	defer closeSvc()
	env.Health.SetReady(true)
	return svc.Run(ctx)
}
