using System.Net;
using System.Net.Sockets;

namespace SdFunctions.Jobs.Webhooks;

/// <summary>
/// Where webhooks may go. A client names the URL, so the service must not become a way into its own network (SSRF): https only
/// (http to a loopback address only when <see cref="WebhookOptions.AllowHttpLoopback"/> is on, for tests and local runs), and never an
/// address in <see cref="RefusedRanges"/> (private, loopback, link-local and the cloud metadata endpoint, Azure's platform
/// address, shared (CGNAT), multicast, reserved, and IPv6 forms that embed an IPv4 address) — checked on the addresses the name resolves to at connect time (<see cref="ConnectAsync"/>), so a name that
/// resolves differently later (DNS rebinding) is caught too.
/// </summary>
public static class OutboundAddress
{
    public const int MaxUrlLength = 2000;

    /// <summary>Why a URL may not be used (null: it may), from the URL alone: scheme, form, and a literal address's range.</summary>
    public static string? RefuseUrl(string url, bool allowHttpLoopback)
    {
        if (url.Length > MaxUrlLength) return $"At most {MaxUrlLength} characters.";
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("https" or "http")) return "An absolute https URL is required.";
        if (uri.UserInfo.Length > 0) return "The URL may not carry a user name or password.";
        if (uri.Scheme == "http" && !(allowHttpLoopback && IsLoopbackHost(uri))) return "Webhooks are sent over https only.";
        if (IPAddress.TryParse(uri.DnsSafeHost, out var literal) && RefuseAddress(literal, allowHttpLoopback) is { } why) return why;
        return null;
    }

    private static bool IsLoopbackHost(Uri uri) =>
        uri.IsLoopback || (IPAddress.TryParse(uri.DnsSafeHost, out var a) && IPAddress.IsLoopback(a));

    /// <summary>
    /// Every range webhooks never go to, in one place, with why. IPv6 forms that carry an IPv4 address (IPv4-compatible,
    /// NAT64, 6to4, Teredo) are refused whole: through a translator they reach any IPv4 address, private ones included.
    /// IPv4-mapped addresses (::ffff:a.b.c.d) are checked as the IPv4 address they are.
    /// </summary>
    public static readonly IReadOnlyList<(IPNetwork Range, string Why)> RefusedRanges =
    [
        (IPNetwork.Parse("0.0.0.0/8"), "\"this network\""),
        (IPNetwork.Parse("10.0.0.0/8"), "private"),
        (IPNetwork.Parse("100.64.0.0/10"), "shared address space (CGNAT)"),
        (IPNetwork.Parse("168.63.129.16/32"), "Azure's platform address (WireServer, DNS, health probes)"),
        (IPNetwork.Parse("169.254.0.0/16"), "link-local (the cloud metadata endpoint)"),
        (IPNetwork.Parse("172.16.0.0/12"), "private"),
        (IPNetwork.Parse("192.0.0.0/24"), "IETF protocol assignments"),
        (IPNetwork.Parse("192.0.2.0/24"), "documentation"),
        (IPNetwork.Parse("192.88.99.0/24"), "6to4 relay anycast"),
        (IPNetwork.Parse("192.168.0.0/16"), "private"),
        (IPNetwork.Parse("198.18.0.0/15"), "benchmarking"),
        (IPNetwork.Parse("198.51.100.0/24"), "documentation"),
        (IPNetwork.Parse("203.0.113.0/24"), "documentation"),
        (IPNetwork.Parse("224.0.0.0/3"), "multicast or reserved"),
        (IPNetwork.Parse("::/96"), "unspecified or IPv4-compatible (an IPv4 address inside IPv6)"),
        (IPNetwork.Parse("64:ff9b::/96"), "NAT64 (an IPv4 address inside IPv6)"),
        (IPNetwork.Parse("64:ff9b:1::/48"), "local NAT64 (an IPv4 address inside IPv6)"),
        (IPNetwork.Parse("100::/64"), "discard-only"),
        (IPNetwork.Parse("2001::/32"), "Teredo (an IPv4 address inside IPv6)"),
        (IPNetwork.Parse("2001:db8::/32"), "documentation"),
        (IPNetwork.Parse("2002::/16"), "6to4 (an IPv4 address inside IPv6)"),
        (IPNetwork.Parse("fc00::/7"), "unique local (private)"),
        (IPNetwork.Parse("fe80::/10"), "link-local"),
        (IPNetwork.Parse("fec0::/10"), "site-local (private)"),
        (IPNetwork.Parse("ff00::/8"), "multicast"),
    ];

    /// <summary>Why an address may not be connected to (null: it may). Loopback only when allowed.</summary>
    public static string? RefuseAddress(IPAddress address, bool allowLoopback)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        if (IPAddress.IsLoopback(address)) return allowLoopback ? null : "It resolves to a loopback address.";
        if (address.AddressFamily is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
            return $"It resolves to {address}, which is not an IP address webhooks are sent to.";
        foreach (var (range, why) in RefusedRanges)
            if (range.Contains(address)) return $"It resolves to {address}, a {why} address ({range}).";
        return null;
    }

    /// <summary>
    /// The handler webhooks are sent with: connects only to addresses <see cref="RefuseAddress"/> allows (resolved here, at connect
    /// time), follows no redirects, keeps no cookies, gives up after <paramref name="timeout"/>.
    /// </summary>
    public static SocketsHttpHandler Handler(bool allowLoopback, TimeSpan timeout) => new()
    {
        AllowAutoRedirect = false, UseCookies = false, UseProxy = false, ConnectTimeout = timeout,
        ConnectCallback = (context, ct) => ConnectAsync(context.DnsEndPoint, allowLoopback, ct),
    };

    private static async ValueTask<Stream> ConnectAsync(DnsEndPoint endpoint, bool allowLoopback, CancellationToken ct)
    {
        var addresses = IPAddress.TryParse(endpoint.Host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(endpoint.Host, ct);
        if (addresses.Length == 0) throw new RefusedAddressException($"{endpoint.Host} does not resolve.");
        // Every address must pass: a name with one private address among public ones could be steered to it.
        foreach (var address in addresses)
            if (RefuseAddress(address, allowLoopback) is { } why) throw new RefusedAddressException($"{endpoint.Host}: {why}");
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(addresses, endpoint.Port, ct);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

/// <summary>A webhook URL whose host is, or resolves to, an address webhooks may not go to.</summary>
public sealed class RefusedAddressException(string message) : Exception(message);
