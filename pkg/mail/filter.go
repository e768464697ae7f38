package mail

import "strings"

// Match classes returned by FilterMatches. A higher class is a more
// specific match: the router prefers a relay whose filter names the exact
// From address over one that names its domain, and that over one with no
// filter.
const (
	// FilterNoMatch: the filter does not accept the From address.
	FilterNoMatch = 0
	// FilterAny: the filter is empty and accepts any From address.
	FilterAny = 1
	// FilterDomain: the filter names the From address's domain.
	FilterDomain = 2
	// FilterAddress: the filter names the From address itself.
	FilterAddress = 3
)

// FilterMatches reports how a relay's From filter matches a From address
// and returns one of FilterNoMatch, FilterAny, FilterDomain, FilterAddress.
//
// The filter is empty (any sender), a domain ("acme.example", also written
// "@acme.example"), an address ("news@acme.example"), or a comma-separated
// list of those, in which case the most specific matching entry counts. A
// domain matches only itself, not its subdomains: a relay authorised for
// acme.example is not thereby authorised for eu.acme.example. Domains are
// compared in lowercase A-labels and addresses case-insensitively (a relay
// does not treat News@ and news@ as different senders). from may be a bare
// address or `Name <address>`; an unparsable from matches only an empty
// filter.
func FilterMatches(filter, from string) (class int) {
	filter = strings.TrimSpace(filter)
	if strings.Trim(filter, ", \t") == "" {
		return FilterAny
	}
	email, ok := filterAddress(from)
	if !ok {
		return FilterNoMatch
	}
	domain := email[strings.LastIndexByte(email, '@')+1:]
	best := FilterNoMatch
	for entry := range strings.SplitSeq(filter, ",") {
		entry = strings.TrimSpace(entry)
		switch {
		case entry == "":
			continue
		case strings.HasPrefix(entry, "@"):
			if filterDomain(entry[1:]) == domain {
				best = max(best, FilterDomain)
			}
		case strings.Contains(entry, "@"):
			want, err := NormalizeMailbox(entry)
			if err != nil {
				want = entry
			}
			if strings.EqualFold(want, email) {
				return FilterAddress
			}
		default:
			if filterDomain(entry) == domain {
				best = max(best, FilterDomain)
			}
		}
	}
	return best
}

// filterAddress returns the canonical addr-spec of a From given bare or as
// a name-addr.
func filterAddress(from string) (string, bool) {
	from = strings.TrimSpace(from)
	if strings.ContainsAny(from, "<>") || strings.ContainsAny(from, " (") {
		a, err := ParseAddress(from)
		if err != nil {
			return "", false
		}
		return a.Email, true
	}
	email, err := NormalizeMailbox(from)
	return email, err == nil
}

func filterDomain(d string) string {
	n, reason := normalizeDomain(strings.TrimSpace(d))
	if reason != "" {
		return strings.ToLower(d)
	}
	return n
}
