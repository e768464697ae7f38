package redisembed

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
)

// AOFName is the file the data is kept in, inside the data directory.
const AOFName = "appendonly.aof"

// Rewrite the file once it has grown to twice its size after the last
// rewrite and to at least minRewriteSize, as redis-server does with its
// default auto-aof-rewrite-percentage 100 and auto-aof-rewrite-min-size.
const minRewriteSize = 64 << 20

// appendLog is the append-only file: a snapshot of every key, then one
// MULTI … EXEC group per write command with the new state of the keys it
// changed. Fields marked "gate" are used only by the goroutine that holds
// the server's gate.
type appendLog struct {
	path string
	f    *os.File // gate and syncMu to replace; Write under gate, Sync under syncMu
	size int64    // gate: bytes in f
	base int64    // gate: size after the last rewrite
	db   int      // gate: database selected at the end of the file

	written atomic.Uint64 // groups appended, counted from the start

	syncMu sync.Mutex
	synced uint64 // syncMu: groups known to be on disk
	err    error  // syncMu: a failed fsync; the file is not trusted after it
}

// loadAOF replays the file at path, if there is one, through apply and
// returns the byte offset where the replayed part ends. A last group that
// lacks its EXEC, or a last command cut short, is what a crash in the
// middle of an append leaves; it was never acknowledged to any client, so
// it is left out (and dropped by the rewrite that follows loading).
// Anything else that does not parse is an error: the file is damaged and
// guessing would bring back the wrong data.
func loadAOF(path string, apply func(args []string) error) (applied int64, torn int64, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	cr := &countingReader{r: f}
	r := bufio.NewReaderSize(cr, 1<<16)
	offset := func() int64 { return cr.n - int64(r.Buffered()) }
	var group [][]string
	inGroup := false
	for {
		args, err := readCommand(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return applied, 0, fmt.Errorf("%s is damaged after byte %d (%w); move it away to start with empty data", path, applied, err)
		}
		if len(args) == 0 {
			return applied, 0, fmt.Errorf("%s is damaged after byte %d (empty command); move it away to start with empty data", path, applied)
		}
		switch strings.ToUpper(args[0]) {
		case "MULTI":
			inGroup, group = true, group[:0]
			continue
		case "EXEC":
			for _, g := range group {
				if err := apply(g); err != nil {
					return applied, 0, fmt.Errorf("replay %s: %w", path, err)
				}
			}
			inGroup, group = false, group[:0]
		default:
			if inGroup {
				group = append(group, args)
				continue
			}
			if err := apply(args); err != nil {
				return applied, 0, fmt.Errorf("replay %s: %w", path, err)
			}
		}
		applied = offset()
	}
	end := cr.n
	return applied, end - applied, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// rewrite replaces the file with what snapshot writes (the whole data
// set), atomically: a temporary file is written and fsynced, then renamed
// over the old one, and the directory is fsynced so that the rename
// survives a power cut. Every group appended before is covered by the
// snapshot, so they all count as durable afterwards. The caller holds the
// gate.
func (l *appendLog) rewrite(snapshot func(w *bufio.Writer) error) error {
	tmp := l.path + ".rewrite"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("rewrite %s: %w", l.path, err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = snapshot(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(l.path))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rewrite %s: %w", l.path, err)
	}
	nf, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopen %s: %w", l.path, err)
	}
	st, err := nf.Stat()
	if err != nil {
		_ = nf.Close()
		return fmt.Errorf("reopen %s: %w", l.path, err)
	}
	l.syncMu.Lock()
	old := l.f
	l.f = nf
	l.synced = l.written.Load()
	l.syncMu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	l.size, l.base, l.db = st.Size(), st.Size(), 0
	return nil
}

// append writes one group with a single write call, so that a crash leaves
// it whole or cut at its end, and returns its sequence number for
// waitDurable. The caller holds the gate.
func (l *appendLog) append(b []byte) (uint64, error) {
	n, err := l.f.Write(b)
	l.size += int64(n)
	if err != nil {
		return 0, fmt.Errorf("append to %s: %w", l.path, err)
	}
	return l.written.Add(1), nil
}

// wantsRewrite says whether the file has grown enough to be rewritten.
// The caller holds the gate.
func (l *appendLog) wantsRewrite() bool {
	return l.size >= minRewriteSize && l.size >= 2*l.base
}

// waitDurable returns once group seq and every group before it are on
// disk. This is group commit: a caller that finds an fsync under way waits
// for it and then usually finds its group already covered, so concurrent
// clients share one fsync instead of queueing for one each.
func (l *appendLog) waitDurable(seq uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.err != nil {
		return l.err
	}
	if l.synced >= seq {
		return nil
	}
	// Everything written so far goes to disk with this fsync.
	upTo := l.written.Load()
	if err := l.f.Sync(); err != nil {
		l.err = fmt.Errorf("fsync %s: %w", l.path, err)
		return l.err
	}
	l.synced = upTo
	return nil
}

// close fsyncs and closes the file.
func (l *appendLog) close() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}

// syncDir makes a rename in dir durable. Windows cannot fsync a
// directory; there the rename is as durable as the file system makes it.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
