using System.Net;
using SdFunctions.Jobs.Webhooks;

namespace SdFunctions.Functions.Tests;

/// <summary>The webhook address filter on address values alone: nothing here connects anywhere.</summary>
public class OutboundAddressTests
{
    [Theory]
    [InlineData("168.63.129.16", "Azure's platform address")]
    [InlineData("169.254.169.254", "link-local")]
    [InlineData("10.0.0.1", "private")]
    [InlineData("100.100.0.1", "CGNAT")]
    [InlineData("240.0.0.1", "reserved")]
    [InlineData("::10.0.0.1", "IPv4-compatible")] // ::a.b.c.d
    [InlineData("::8.8.8.8", "IPv4-compatible")] // even a public one: a translator decides where it goes
    [InlineData("::", "unspecified")]
    [InlineData("64:ff9b::169.254.169.254", "NAT64")]
    [InlineData("64:ff9b::a00:1", "NAT64")]
    [InlineData("64:ff9b:1::a00:1", "NAT64")]
    [InlineData("2002:a9fe:a9fe::1", "6to4")]
    [InlineData("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo")]
    [InlineData("::ffff:192.168.1.1", "private")] // IPv4-mapped: checked as the IPv4 address
    [InlineData("::ffff:168.63.129.16", "Azure's platform address")]
    [InlineData("fd12:3456::1", "unique local")]
    [InlineData("fe80::1%2", "link-local")]
    [InlineData("ff02::1", "multicast")]
    public void RefusedAddressesSayWhy(string text, string why)
    {
        var refused = OutboundAddress.RefuseAddress(IPAddress.Parse(text), allowLoopback: true);
        Assert.NotNull(refused);
        Assert.Contains(why, refused);
    }

    [Theory]
    [InlineData("8.8.8.8")]
    [InlineData("20.50.2.1")] // an Azure public address
    [InlineData("168.63.129.17")] // beside the platform address, not it
    [InlineData("::ffff:8.8.8.8")]
    [InlineData("2606:4700:4700::1111")]
    [InlineData("2a01:111:f100::1")]
    public void PublicAddressesPass(string text) => Assert.Null(OutboundAddress.RefuseAddress(IPAddress.Parse(text), allowLoopback: false));

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("127.9.9.9")]
    [InlineData("::1")]
    [InlineData("::ffff:127.0.0.1")]
    public void LoopbackOnlyWhenAllowed(string text)
    {
        Assert.Null(OutboundAddress.RefuseAddress(IPAddress.Parse(text), allowLoopback: true));
        Assert.Contains("loopback", OutboundAddress.RefuseAddress(IPAddress.Parse(text), allowLoopback: false));
    }

    [Fact]
    public void UrlsWithALiteralInARefusedRangeAreRefusedBeforeAnyConnection()
    {
        Assert.NotNull(OutboundAddress.RefuseUrl("https://[::169.254.169.254]/latest", allowHttpLoopback: false));
        Assert.NotNull(OutboundAddress.RefuseUrl("https://[2002:a9fe:a9fe::]/", allowHttpLoopback: false));
        Assert.Null(OutboundAddress.RefuseUrl("https://example.com/hook", allowHttpLoopback: false));
    }
}
