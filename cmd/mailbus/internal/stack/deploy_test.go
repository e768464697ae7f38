package stack_test

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/obs"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// deployDir is the repository's deploy/ directory.
const deployDir = "../../../../deploy"

// externalMetrics are the metrics the dashboard and the alerts may name
// although no mailbus service exports them.
var externalMetrics = map[string]string{
	"up": "Prometheus's own: whether a scrape of the target succeeded",
}

// services are mailbus's services: one Deployment, one compose service and
// one binary each.
var services = []string{"config", "router", "quota", "signer", "sender", "tracker", "webhook", "bounce", "console"}

// TestDeploy_dashboardAlertsAndManifestsMatchWhatTheServicesExport runs the
// pipeline, sends mail through it (delivered, deferred, bounced at SMTP time
// and bounced later by DSN), scrapes its /metrics, and checks deploy/
// against what it saw: every metric the Grafana dashboard and the alert
// rules name is exported (histogram suffixes resolved, external metrics
// listed above), the rules are valid, and every consumer group the stages
// run has a KEDA trigger. The manifests' other promises need no pipeline
// and are checked too.
func TestDeploy_dashboardAlertsAndManifestsMatchWhatTheServicesExport(t *testing.T) {
	dashboard := dashboardExprs(t)
	alerts := alertExprs(t)
	needed := map[string][]string{} // metric name -> where it is used
	for where, expr := range dashboard {
		for _, name := range metricNames(t, where, expr) {
			needed[name] = append(needed[name], where)
		}
	}
	for where, expr := range alerts {
		for _, name := range metricNames(t, where, expr) {
			needed[name] = append(needed[name], where)
		}
	}
	if len(dashboard) < 20 || len(alerts) < 10 || len(needed) < 20 {
		t.Fatalf("read %d dashboard queries and %d alerts naming %d metrics: the files were not read as meant", len(dashboard), len(alerts), len(needed))
	}

	const (
		deferredRcpt = "busy@example.net"
		bouncedRcpt  = "nobody@example.net"
	)
	reg := obs.NewRegistry() // what a service's main serves on /metrics
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPReplies(
		testkit.SMTPReplyToRcpt(deferredRcpt, testkit.SMTPReply{Code: 452, Enhanced: "4.2.2", Text: "Mailbox full"}),
		testkit.SMTPReplyToRcpt(bouncedRcpt, testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "User unknown"}),
	)}, func(o *stack.Options) {
		o.Metrics = reg
		withDailyLimits(t, o.SeedFile)
	})
	srv := httptest.NewServer(obs.AdminHandler(reg, nil))
	defer srv.Close()

	sent := submit(t, p, "deploy-sent", "bob@example.net")
	deferred := submit(t, p, "deploy-deferred", deferredRcpt)
	bounced := submit(t, p, "deploy-bounced", bouncedRcpt)
	msg := p.smtp.WaitMessages(t, 1)[0]
	p.waitMessage(t, sent, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	p.waitMessage(t, deferred, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED))
	p.waitMessage(t, bounced, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED))
	report := dsn("bob@example.net", "5.1.1", "550 5.1.1 <bob@example.net>: User unknown", msg.Data)
	if err := sendBounce(p.BounceAddr, msg.From, report); err != nil {
		t.Fatalf("send a DSN to the bounce listener: %v", err)
	}
	p.waitMessage(t, sent, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "userunknown"))
	// A record that is not a submission goes to mail.poison.
	poisonOne(t, p)
	// A restarted sender closes its SMTP connections, which the connection
	// metrics count, and delivers again once it has joined its groups.
	p.KillSender()
	p.RestartSender()
	again := submit(t, p, "deploy-again", "carol@example.net")
	p.waitMessage(t, again, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))

	// Counters and lag appear as records flow; wait for all of them.
	var families map[string]*dto.MetricFamily
	var missing []string
	deadline := time.Now().Add(stack.WaitTimeout)
	for {
		families = scrape(t, srv.URL)
		missing = missing[:0]
		for name := range needed {
			if !exported(families, name) && externalMetrics[name] == "" {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	sort.Strings(missing)
	for _, name := range missing {
		t.Errorf("%s is used by %v but no service exports it", name, needed[name])
	}
	t.Logf("the dashboard (%d queries) and the alerts (%d rules) name %d metrics; the pipeline exports %d metric families",
		len(dashboard), len(alerts), len(needed), len(families))

	t.Run("everyConsumerGroupHasAKEDATrigger", func(t *testing.T) {
		triggers := scaledObjectTriggers(t)
		var groups []string
		for _, m := range families[bus.MetricConsumerLag].GetMetric() {
			gt := labelValue(m, "group") + " " + labelValue(m, "topic")
			groups = append(groups, gt)
			if strings.Contains(gt, ".retry-") {
				continue // records wait there for their delay, by design
			}
			if !triggers[gt] {
				t.Errorf("consumer group and topic %q has no KEDA kafka trigger in deploy/k8s/base", gt)
			}
		}
		for gt := range triggers {
			if !slices.Contains(groups, gt) {
				t.Errorf("a KEDA trigger scales on %q, which no stage consumes (the stages run %v)", gt, groups)
			}
		}
	})
}

// poisonOne publishes a record to mail.submit that is not a submission.
func poisonOne(t *testing.T, p *pipeline) {
	t.Helper()
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	msg := message.NewMessage("deploy-garbage", []byte("{not a submission"))
	msg.Metadata.Set(bus.MetaContentType, "application/json")
	if err := pub.Publish(bus.TopicSubmit, msg); err != nil {
		t.Fatal(err)
	}
}

// withDailyLimits gives the seed's tenant and relay daily limits, so that
// the limit gauges (only listed for limited ones) exist.
func withDailyLimits(t *testing.T, seedFile string) {
	t.Helper()
	b, err := os.ReadFile(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	seed := strings.Replace(string(b), "    time_zone: Europe/Berlin\n", "    time_zone: Europe/Berlin\n    daily_limit: 100000\n", 1)
	seed = strings.Replace(seed, "        priority: 10\n", "        priority: 10\n        daily_limit: 1000\n", 1)
	if strings.Count(seed, "daily_limit") != 2 {
		t.Fatalf("the seed changed shape; cannot add daily limits to:\n%s", b)
	}
	if err := os.WriteFile(seedFile, []byte(seed), 0o600); err != nil {
		t.Fatal(err)
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	return mfs
}

// exported reports whether a query's metric name is in the scrape: a
// family, or a histogram's (summary's) _bucket, _sum or _count series.
func exported(families map[string]*dto.MetricFamily, name string) bool {
	if mf, ok := families[name]; ok && len(mf.GetMetric()) > 0 {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		mf, ok := families[base]
		if !ok || len(mf.GetMetric()) == 0 {
			return false
		}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			return true
		case dto.MetricType_SUMMARY:
			return suffix != "_bucket"
		}
	}
	return false
}

func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// grafanaVars are the dashboard's Grafana variables, as Grafana fills them
// in before the query reaches Prometheus.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "6h")

// dashboardExprs returns every query of the dashboard, by panel title.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "grafana/mailbus.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana/mailbus.json: %v", err)
	}
	out := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					out[fmt.Sprintf("dashboard %q %s", p.Title, tg.RefID)] = grafanaVars.Replace(tg.Expr)
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	return out
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// alertExprs validates the rules file as Prometheus loads it and returns
// every rule's expression, by alert name.
func alertExprs(t *testing.T) map[string]string {
	t.Helper()
	groups, errs := rulefmt.ParseFile(filepath.Join(deployDir, "prometheus/alerts.yaml"), false, model.UTF8Validation,
		parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("prometheus/alerts.yaml: %v", err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	out := map[string]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: rule %q is not an alert", g.Name, r.Record)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s needs a severity, a summary and a description (what it means, what to do)", r.Alert)
			}
			out["alert "+r.Alert] = r.Expr
		}
	}
	return out
}

// metricNames returns the metric names an expression selects.
func metricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		if name == "" {
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel {
					name = m.Value
				}
			}
		}
		if name == "" {
			t.Errorf("%s: a selector of %q names no metric", where, expr)
			return nil
		}
		names = append(names, name)
		return nil
	})
	return names
}

// yamlDocs returns every document of every .yaml file under dir.
func yamlDocs(t *testing.T, dir string) []map[string]any {
	t.Helper()
	var docs []map[string]any
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		dec := yaml.NewDecoder(f)
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); err == io.EOF {
				return nil
			} else if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if doc != nil {
				doc["#file"] = path
				docs = append(docs, doc)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

// get walks a decoded YAML document: get(doc, "spec", "template", ...).
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case int:
		return strconv.Itoa(s)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// scaledObjectTriggers returns the "group topic" pairs of the base's KEDA
// kafka triggers.
func scaledObjectTriggers(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, doc := range yamlDocs(t, filepath.Join(deployDir, "k8s/base")) {
		if doc["kind"] != "ScaledObject" {
			continue
		}
		trs, _ := get(doc, "spec", "triggers").([]any)
		for _, tr := range trs {
			if get(tr, "type") != "kafka" {
				continue
			}
			out[str(get(tr, "metadata", "consumerGroup"))+" "+str(get(tr, "metadata", "topic"))] = true
		}
	}
	return out
}

// TestDeploy_kubernetesBaseKeepsItsPromises checks what the kustomize base
// promises an SRE, on its source files (make deploy-check renders it): a
// Deployment per service with probes on the admin port, resources and a
// grace period longer than the bus's shutdown wait; a PodDisruptionBudget
// for each; a KEDA ScaledObject for every consuming stage, with no more
// replicas than partitions; topics as pkg/bus names them; and only
// environment variables that mailbus reads.
func TestDeploy_kubernetesBaseKeepsItsPromises(t *testing.T) {
	docs := yamlDocs(t, filepath.Join(deployDir, "k8s/base"))
	byKind := map[string]map[string]map[string]any{}
	for _, doc := range docs {
		kind, name := str(doc["kind"]), str(get(doc, "metadata", "name"))
		if byKind[kind] == nil {
			byKind[kind] = map[string]map[string]any{}
		}
		byKind[kind][name] = doc
	}
	read := readEnvNames(t)

	job := byKind["Job"]["mailbus-topics"]
	if job == nil {
		t.Fatal("no Job mailbus-topics creates the topics")
	}
	jobEnv := map[string]string{}
	for _, e := range get(job, "spec", "template", "spec", "containers", 0, "env").([]any) {
		jobEnv[str(get(e, "name"))] = str(get(e, "value"))
	}
	if got, want := strings.Fields(jobEnv["TOPICS"]), bus.AllTopics(); !slices.Equal(got, want) {
		t.Errorf("the topics Job creates %v, pkg/bus uses %v", got, want)
	}
	partitions, err := strconv.Atoi(jobEnv["PARTITIONS"])
	if err != nil {
		t.Fatalf("topics Job PARTITIONS: %v", err)
	}
	if !strings.HasPrefix(str(get(job, "spec", "template", "spec", "containers", 0, "image")), "apache/kafka:4.") {
		t.Errorf("the topics Job should use Kafka 4's tools")
	}

	// Graceful termination: Router.Run waits bus.Config.CloseTimeout (30 s
	// by default) for in-flight records after SIGTERM.
	const closeTimeout = 30
	for _, svc := range services {
		name := "mailbus-" + svc
		dep := byKind["Deployment"][name]
		if dep == nil {
			t.Errorf("no Deployment %s", name)
			continue
		}
		pod := get(dep, "spec", "template", "spec")
		if g, _ := get(pod, "terminationGracePeriodSeconds").(int); g <= closeTimeout {
			t.Errorf("%s: terminationGracePeriodSeconds %d does not cover the bus's %d s shutdown wait", name, g, closeTimeout)
		}
		c := get(pod, "containers", 0)
		if cmd := str(get(c, "command", 0)); cmd != "/usr/local/bin/"+svc {
			t.Errorf("%s runs %q", name, cmd)
		}
		for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/readyz"} {
			if get(c, probe, "httpGet", "path") != path || get(c, probe, "httpGet", "port") != "admin" {
				t.Errorf("%s: %s should GET %s on the admin port", name, probe, path)
			}
		}
		if get(c, "ports", 0, "name") != "admin" || get(c, "ports", 0, "containerPort") != 9090 {
			t.Errorf("%s: the first port should be admin on 9090 (MAILBUS_ADMIN_HTTP_ADDR's default)", name)
		}
		if get(c, "resources", "requests", "cpu") == nil || get(c, "resources", "requests", "memory") == nil || get(c, "resources", "limits", "memory") == nil {
			t.Errorf("%s: needs CPU and memory requests and a memory limit", name)
		}
		if svc == "sender" && get(c, "resources", "limits", "memory") != "512Mi" {
			t.Errorf("sender: memory limit %v, want 512Mi", get(c, "resources", "limits", "memory"))
		}
		envs, _ := get(c, "env").([]any)
		for _, e := range envs {
			if n := str(get(e, "name")); !read[n] {
				t.Errorf("%s sets %s, which mailbus does not read", name, n)
			}
		}
		if byKind["PodDisruptionBudget"][name] == nil {
			t.Errorf("no PodDisruptionBudget %s", name)
		}
		so := byKind["ScaledObject"][name]
		consumes := svc != "config" && svc != "console"
		if consumes != (so != nil) {
			t.Errorf("%s: ScaledObject present %v, consumes topics %v", name, so != nil, consumes)
		}
		if so != nil {
			if max, _ := get(so, "spec", "maxReplicaCount").(int); max < 1 || max > partitions {
				t.Errorf("%s: maxReplicaCount %d, the topics have %d partitions", name, max, partitions)
			}
			if get(so, "spec", "scaleTargetRef", "name") != name {
				t.Errorf("%s: the ScaledObject scales %v", name, get(so, "spec", "scaleTargetRef", "name"))
			}
		}
	}
	kust, err := os.ReadFile(filepath.Join(deployDir, "k8s/base/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s+- ([A-Z_]+)=`).FindAllStringSubmatch(string(kust), -1) {
		if !read[m[1]] {
			t.Errorf("the base ConfigMap sets %s, which mailbus does not read", m[1])
		}
	}
}

// TestDeploy_composeRunsEveryServiceOnKafka4 checks compose.yaml: every
// service, a Kafka 4 broker, mailbus's topics, only variables mailbus
// reads.
func TestDeploy_composeRunsEveryServiceOnKafka4(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image       string         `yaml:"image"`
			Entrypoint  []string       `yaml:"entrypoint"`
			Command     []string       `yaml:"command"`
			Environment map[string]any `yaml:"environment"`
			Profiles    []string       `yaml:"profiles"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	read := readEnvNames(t)
	for _, svc := range services {
		s, ok := compose.Services[svc]
		if !ok {
			t.Errorf("compose.yaml has no %s", svc)
			continue
		}
		if len(s.Entrypoint) != 1 || s.Entrypoint[0] != "/usr/local/bin/"+svc {
			t.Errorf("compose %s runs %v", svc, s.Entrypoint)
		}
		for k := range s.Environment {
			if !read[k] {
				t.Errorf("compose %s sets %s, which mailbus does not read", svc, k)
			}
		}
	}
	if img := compose.Services["kafka"].Image; !strings.HasPrefix(img, "apache/kafka:4.") {
		t.Errorf("compose's Kafka is %q, want an Apache Kafka 4.x (KRaft) image", img)
	}
	var topics []string
	for _, c := range compose.Services["topics"].Command {
		topics = append(topics, strings.FieldsFunc(c, func(r rune) bool { return strings.ContainsRune(" \t\n;\\", r) })...)
	}
	for _, topic := range bus.AllTopics() {
		if !slices.Contains(topics, topic) {
			t.Errorf("compose's topics service does not create %s", topic)
		}
	}
	for _, svc := range []string{"prometheus", "grafana"} {
		if !slices.Contains(compose.Services[svc].Profiles, "observability") {
			t.Errorf("compose's %s should be in the observability profile", svc)
		}
	}
}

// TestDeploy_prometheusRuleIsTheAlertsFile keeps the Prometheus Operator's
// copy of the alerts equal to deploy/prometheus/alerts.yaml.
func TestDeploy_prometheusRuleIsTheAlertsFile(t *testing.T) {
	var file, rule struct {
		Groups []any `yaml:"groups"`
		Spec   struct {
			Groups []any `yaml:"groups"`
		} `yaml:"spec"`
	}
	for path, dst := range map[string]any{"prometheus/alerts.yaml": &file, "k8s/components/prometheus-operator/prometheusrule.yaml": &rule} {
		b, err := os.ReadFile(filepath.Join(deployDir, path))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, dst); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if len(file.Groups) == 0 || !reflect.DeepEqual(file.Groups, rule.Spec.Groups) {
		t.Fatal("k8s/components/prometheus-operator/prometheusrule.yaml differs from prometheus/alerts.yaml: copy the groups over")
	}
}

// readEnvNames returns the environment variables mailbus reads: the
// quoted upper-case names in the services' and pkg's Go source, and the Go
// runtime's.
func readEnvNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true}
	quoted := regexp.MustCompile(`"((?:MAILBUS|KAFKA|REDIS|DATABASE)_[A-Z0-9_]+)"`)
	for _, dir := range []string{"../../../../services", "../../../../pkg"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range quoted.FindAllStringSubmatch(string(b), -1) {
				names[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !names["KAFKA_BROKERS"] || !names["MAILBUS_SECRET_KEY"] {
		t.Fatalf("found %d variable names in the source, not the ones every service reads", len(names))
	}
	return names
}
