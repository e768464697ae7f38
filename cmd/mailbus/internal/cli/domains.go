package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func domainsCmd() *cobra.Command {
	var api apiFlags
	var tenant string
	cmd := &cobra.Command{
		Use:   "domains",
		Short: "list the sender domains and the DNS records to publish for them (DKIM TXT records)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			c := mailbusv1.NewConfigServiceClient(conn)
			var domains []*mailbusv1.Domain
			for page := ""; ; {
				resp, err := c.ListDomains(cmd.Context(), &mailbusv1.ListDomainsRequest{TenantId: tenant, PageToken: page, PageSize: 100})
				if err != nil {
					return fmt.Errorf("list domains: %w", err)
				}
				domains = append(domains, resp.GetDomains()...)
				if page = resp.GetNextPageToken(); page == "" {
					break
				}
			}
			printDomains(cmd.OutOrStdout(), domains)
			return nil
		},
	}
	api.register(cmd)
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's domains")
	return cmd
}

// printDomains prints each domain with its DKIM records in zone-file form,
// ready to paste: long values split into quoted strings of at most 255
// characters, as a TXT record's strings must be.
func printDomains(w io.Writer, domains []*mailbusv1.Domain) {
	if len(domains) == 0 {
		fmt.Fprintln(w, "no domains configured")
		return
	}
	for i, d := range domains {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "; %s (tenant %s)\n", d.GetName(), d.GetTenantId())
		if len(d.GetDkimKeys()) == 0 {
			fmt.Fprintln(w, "; no DKIM keys: mail from this domain is not signed")
		}
		for _, k := range d.GetDkimKeys() {
			state := ""
			if !k.GetActive() {
				state = " (inactive: not signing)"
			}
			fmt.Fprintf(w, "; DKIM selector %s, %s%s\n", k.GetSelector(), strings.TrimPrefix(k.GetAlgorithm().String(), "DKIM_ALGORITHM_"), state)
			fmt.Fprintln(w, dkimkey.ZoneTXT(k.GetDnsName(), k.GetDnsTxtValue()))
		}
	}
}

func domainCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "domain", Short: "check a sender domain"}
	var api apiFlags
	check := &cobra.Command{
		Use:   "check DOMAIN",
		Short: "look up the DNS records the domain's mail needs (SPF, DKIM, DMARC and alignment, bounce MX, PTR) and print what to publish",
		Long: "Looks up what the real path of the domain's mail needs — SPF of its return path authorizing its relays and the\n" +
			"default server (at most 10 DNS lookups), each DKIM key's TXT record, DMARC and the alignment of DKIM d= and the\n" +
			"return path with From, the bounce domain's MX, and for direct delivery the PTR of the sending address — and says\n" +
			"per record found, missing or wrong, with the record to publish. Exits 1 when anything is missing or wrong.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := mailbusv1.NewConfigServiceClient(conn).CheckDomain(cmd.Context(), &mailbusv1.CheckDomainRequest{Name: args[0]})
			if err != nil {
				return fmt.Errorf("check domain %s: %w", args[0], err)
			}
			if !printCheck(cmd.OutOrStdout(), resp) {
				return ExitError(1)
			}
			return nil
		},
	}
	api.register(check)
	cmd.AddCommand(check)
	return cmd
}

// printCheck prints one block per item: status, kind and name, what was
// found, the record to publish and advice. It reports whether every item
// was found.
func printCheck(w io.Writer, resp *mailbusv1.CheckDomainResponse) bool {
	ok := true
	fmt.Fprintf(w, "DNS check of %s\n", resp.GetDomain())
	for _, it := range resp.GetItems() {
		st := strings.TrimPrefix(it.GetStatus().String(), "DNS_CHECK_STATUS_")
		if it.GetStatus() != mailbusv1.DnsCheckStatus_DNS_CHECK_STATUS_FOUND {
			ok = false
		}
		fmt.Fprintf(w, "\n%-7s %s %s\n", st, it.GetKind(), it.GetName())
		fmt.Fprintf(w, "        %s\n", it.GetDetail())
		if it.GetPublish() != "" {
			fmt.Fprintf(w, "        publish: %s\n", it.GetPublish())
		}
		for _, a := range it.GetAdvice() {
			fmt.Fprintf(w, "        advice: %s\n", a)
		}
	}
	return ok
}
