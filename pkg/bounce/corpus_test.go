package bounce

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// corpusDir is where the shared bounce corpus lives relative to this
// package (the repository is cloned with shared/ beside it).
const corpusDir = "../../../shared/testdata/bounces"

// expectedRow is one line of expected.tsv.
type expectedRow struct {
	file, recipient, reason, status, replycode, feedbacktype string
	hard                                                     bool
}

func corpusPath(t testing.TB, parts ...string) string {
	t.Helper()
	dir := filepath.Join(append([]string{corpusDir}, parts...)...)
	if _, err := os.Stat(filepath.Join(corpusDir, "expected.tsv")); err != nil {
		t.Fatalf("bounce corpus not found at %s (clone the repository with shared/ beside it): %v", corpusDir, err)
	}
	return dir
}

func loadExpected(t testing.TB) []expectedRow {
	t.Helper()
	f, err := os.Open(corpusPath(t, "expected.tsv"))
	if err != nil {
		t.Fatalf("opening expected.tsv: %v", err)
	}
	defer f.Close()
	var rows []expectedRow
	sc := bufio.NewScanner(f)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		c := strings.Split(sc.Text(), "\t")
		if len(c) < 7 {
			continue
		}
		rows = append(rows, expectedRow{file: c[0], recipient: c[1], reason: c[2], status: c[3], replycode: c[4],
			hard: c[5] == "true", feedbacktype: c[6]})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading expected.tsv: %v", err)
	}
	return rows
}

// parseCorpus parses every sample once.
func parseCorpus(t testing.TB) map[string][]Record {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(corpusPath(t, "samples"), "*.eml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s: %v", corpusPath(t, "samples"), err)
	}
	out := make(map[string][]Record, len(files))
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("reading %s: %v", p, err)
		}
		recs, err := Parse(raw)
		if err != nil {
			t.Errorf("Parse(%s): %v", filepath.Base(p), err)
		}
		out[filepath.Base(p)] = recs
	}
	return out
}

func findRecord(recs []Record, rcpt string) *Record {
	for i := range recs {
		if strings.EqualFold(recs[i].Recipient, rcpt) {
			return &recs[i]
		}
	}
	return nil
}

func TestClassifier_agreesWithCorpus(t *testing.T) {
	rows := loadExpected(t)
	parsed := parseCorpus(t)

	reasonOK, hardOK := 0, 0
	confusion := map[string][]string{} // "expected -> got" -> files
	for _, r := range rows {
		rec := findRecord(parsed[r.file], r.recipient)
		got, gotHard := "(missing)", false
		if rec != nil {
			got, gotHard = rec.Reason, rec.Hard
		}
		if got == r.reason {
			reasonOK++
		} else {
			k := r.reason + " -> " + got
			confusion[k] = append(confusion[k], r.file)
		}
		if rec != nil && gotHard == r.hard {
			hardOK++
		}
		if os.Getenv("BOUNCE_VERBOSE") != "" && (got != r.reason || rec == nil || gotHard != r.hard) {
			t.Logf("%s %s: want %s/%v got %s/%v", r.file, r.recipient, r.reason, r.hard, got, gotHard)
			if rec != nil {
				t.Logf("    status=%s reply=%d diag=%.300q", rec.Status, rec.ReplyCode, rec.Diagnostic)
			}
		}
	}
	n := len(rows)
	reasonPct := 100 * float64(reasonOK) / float64(n)
	hardPct := 100 * float64(hardOK) / float64(n)
	t.Logf("reason agreement: %d/%d = %.2f%%", reasonOK, n, reasonPct)
	t.Logf("hard/soft agreement: %d/%d = %.2f%%", hardOK, n, hardPct)

	keys := make([]string, 0, len(confusion))
	for k := range confusion {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if len(confusion[keys[i]]) != len(confusion[keys[j]]) {
			return len(confusion[keys[i]]) > len(confusion[keys[j]])
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		t.Logf("  %-36s %3d  %s", k, len(confusion[k]), strings.Join(confusion[k], " "))
	}
	if reasonPct < 95 {
		t.Errorf("reason agreement %.2f%% is below 95%%", reasonPct)
	}
	if hardPct < 99 {
		t.Errorf("hard/soft agreement %.2f%% is below 99%%", hardPct)
	}
}

func TestParse_notBounceGivesNoRecords(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusPath(t, "not-bounce"), "*.eml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no not-bounce samples: %v", err)
	}
	for _, p := range files {
		t.Run(filepath.Base(p), func(t *testing.T) {
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := Parse(raw)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(recs) != 0 {
				t.Errorf("got %d records, want none: %+v", len(recs), recs[0])
			}
		})
	}
}

// TestDebugDump prints the records of the samples named in BOUNCE_DUMP
// (comma-separated file names); it is a development aid.
func TestDebugDump(t *testing.T) {
	names := os.Getenv("BOUNCE_DUMP")
	if names == "" {
		t.Skip("set BOUNCE_DUMP=file.eml[,file.eml] to dump records")
	}
	for _, n := range strings.Split(names, ",") {
		raw, err := os.ReadFile(filepath.Join(corpusPath(t, "samples"), n))
		if err != nil {
			t.Fatal(err)
		}
		recs, err := Parse(raw)
		fmt.Printf("== %s err=%v records=%d\n", n, err, len(recs))
		for _, r := range recs {
			fmt.Printf("  rcpt=%s reason=%s hard=%v status=%s reply=%d action=%s rhost=%s lhost=%s fb=%s\n    diag=%q\n",
				r.Recipient, r.Reason, r.Hard, r.Status, r.ReplyCode, r.Action, r.RemoteMTA, r.ReportingMTA, r.FeedbackType, r.Diagnostic)
		}
	}
}
