package bounce

import (
	"bufio"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// familiesDir holds the second corpus: bounces of families the shared
// corpus has few or none of, labelled hard or soft by hand (see its
// README for sources, licences and the reasoning behind each label).
const familiesDir = "testdata/families"

// familyFloors are the recorded hard/soft agreements per family. A change
// that makes a family agree less fails; raise a floor when a fix makes a
// family agree more. A soft sample read as hard fails whatever the floor:
// a hard bounce suppresses the address for good.
var familyFloors = map[string]int{
	"address-state": 61,
	"greylisting":   18,
	"intl-ndr":      22,
	"jp-carrier":    35,
	"mailbox-full":  55,
	"spam-policy":   72,
}

// familySample is one row of samples.tsv.
type familySample struct {
	family, kind, ref, recipient, reason string
	hard                                 bool
	line                                 int
}

func loadFamilySamples(t *testing.T) []familySample {
	t.Helper()
	f, err := os.Open(filepath.Join(familiesDir, "samples.tsv"))
	if err != nil {
		t.Fatalf("opening samples.tsv: %v", err)
	}
	defer f.Close()
	var out []familySample
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if n == 1 || strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		c := strings.Split(line, "\t")
		if len(c) < 6 {
			t.Fatalf("samples.tsv:%d: %d columns, want at least 6", n, len(c))
		}
		if c[5] != "hard" && c[5] != "soft" {
			t.Fatalf("samples.tsv:%d: verdict %q is neither hard nor soft", n, c[5])
		}
		out = append(out, familySample{family: c[0], kind: c[1], ref: c[2], recipient: c[3], reason: c[4],
			hard: c[5] == "hard", line: n})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading samples.tsv: %v", err)
	}
	return out
}

// familyVerdict runs the classifier on one sample: Parse for a message
// (ours under samples/, or the shared corpus's), Classify for an SMTP
// reply as the sender sees it.
func familyVerdict(t *testing.T, s familySample, parsed map[string][]Record) (reason string, hard, found bool) {
	t.Helper()
	if s.kind == "smtp" {
		code, enhanced := replyParts(s.ref)
		r, h := Classify(code, enhanced, s.ref)
		return r, h, true
	}
	path := filepath.Join(familiesDir, "samples", s.ref)
	if s.kind == "shared" {
		path = filepath.Join(corpusPath(t, "samples"), s.ref)
	} else if s.kind != "eml" {
		t.Fatalf("samples.tsv:%d: unknown kind %q", s.line, s.kind)
	}
	recs, ok := parsed[path]
	if !ok {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("samples.tsv:%d: %v", s.line, err)
		}
		if recs, err = Parse(raw); err != nil {
			t.Errorf("Parse(%s): %v", s.ref, err)
		}
		parsed[path] = recs
	}
	rec := findRecord(recs, s.recipient)
	if rec == nil {
		return "(missing)", false, false
	}
	return rec.Reason, rec.Hard, true
}

// replyParts takes the reply code and enhanced status from a line such as
// "rcpt: 450 4.2.0 text", as a DSN's Status and Diagnostic-Code give them.
func replyParts(line string) (code int, enhanced string) {
	_, rest := splitStage(line)
	f := strings.Fields(rest)
	if len(f) > 0 && len(f[0]) == 3 {
		code, _ = strconv.Atoi(f[0])
	}
	if len(f) > 1 && code > 0 && strings.Count(f[1], ".") == 2 && (f[1][0] == '2' || f[1][0] == '4' || f[1][0] == '5') {
		enhanced = f[1]
	}
	return code, enhanced
}

type familyScore struct {
	samples, agree, reasonAgree, hardToSoft, softToHard, missing int
}

func TestClassifier_familiesHardSoft(t *testing.T) {
	samples := loadFamilySamples(t)
	parsed := map[string][]Record{}
	scores := map[string]*familyScore{}
	for _, s := range samples {
		sc := scores[s.family]
		if sc == nil {
			if _, ok := familyFloors[s.family]; !ok {
				t.Errorf("samples.tsv:%d: family %q has no floor in familyFloors", s.line, s.family)
			}
			sc = &familyScore{}
			scores[s.family] = sc
		}
		sc.samples++
		reason, hard, found := familyVerdict(t, s, parsed)
		if reason == s.reason {
			sc.reasonAgree++
		}
		switch {
		case !found:
			// A missing record suppresses nothing: soft in effect.
			sc.missing++
			if s.hard {
				sc.hardToSoft++
			} else {
				sc.agree++
			}
		case hard == s.hard:
			sc.agree++
		case s.hard:
			sc.hardToSoft++
		default:
			sc.softToHard++
		}
		if found && hard && !s.hard {
			t.Errorf("samples.tsv:%d %s %s: soft (%s) read as hard %s; this would suppress a good address",
				s.line, s.family, s.ref, s.reason, reason)
		}
		if os.Getenv("BOUNCE_VERBOSE") != "" && (hard != s.hard || reason != s.reason) {
			t.Logf("samples.tsv:%d %-13s %-40.40s want %s/%v got %s/%v", s.line, s.family, s.ref, s.reason, s.hard, reason, hard)
		}
	}

	names := make([]string, 0, len(scores))
	for n := range scores {
		names = append(names, n)
	}
	sort.Strings(names)
	var total familyScore
	t.Logf("%-14s %7s %6s %7s %10s %10s %7s", "family", "samples", "agree", "reason", "hard→soft", "soft→hard", "missing")
	for _, n := range names {
		sc := scores[n]
		t.Logf("%-14s %7d %6d %7d %10d %10d %7d", n, sc.samples, sc.agree, sc.reasonAgree, sc.hardToSoft, sc.softToHard, sc.missing)
		total.samples += sc.samples
		total.agree += sc.agree
		total.reasonAgree += sc.reasonAgree
		total.hardToSoft += sc.hardToSoft
		total.softToHard += sc.softToHard
		total.missing += sc.missing
		if sc.agree < familyFloors[n] {
			t.Errorf("family %s: %d of %d agree, below the recorded %d", n, sc.agree, sc.samples, familyFloors[n])
		}
	}
	t.Logf("%-14s %7d %6d %7d %10d %10d %7d", "all", total.samples, total.agree, total.reasonAgree, total.hardToSoft, total.softToHard, total.missing)
	for n := range familyFloors {
		if scores[n] == nil {
			t.Errorf("family %s has a floor but no samples", n)
		}
	}
}
