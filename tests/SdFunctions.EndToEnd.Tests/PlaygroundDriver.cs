using System.Diagnostics;
using System.Text.Json;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>
/// Runs a scenario of browser/playground.mjs (Debian's chromium driven by playwright-core) against a host and returns what the
/// page showed; screenshots of each state go to tests/SdFunctions.EndToEnd.Tests/TestResults/playground/ (not committed).
/// </summary>
public static class PlaygroundDriver
{
    private static readonly string Driver = Path.Combine(FunctionsHostFixture.RepoRoot(), "tests", "SdFunctions.EndToEnd.Tests", "browser");
    public static readonly string Screenshots = Path.Combine(FunctionsHostFixture.RepoRoot(), "tests", "SdFunctions.EndToEnd.Tests", "TestResults", "playground");
    private const string Chromium = "/usr/bin/chromium";

    public static async Task<JsonElement> RunAsync(FunctionsHostFixture host, string scenario, Xunit.Abstractions.ITestOutputHelper output)
    {
        if (!File.Exists(Chromium))
            throw new FileNotFoundException("Debian's chromium is needed for the browser tests: apt-get install chromium (.ci/run installs it)", Chromium);
        await EnsurePlaywrightAsync();
        var start = new ProcessStartInfo("node", ["playground.mjs", scenario, $"{host.BaseUrl}/api/", FunctionsHostFixture.FunctionKey, Screenshots])
        {
            WorkingDirectory = Driver, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var node = Process.Start(start)!;
        var stdout = node.StandardOutput.ReadToEndAsync();
        var stderr = node.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        try { await node.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException) { node.Kill(entireProcessTree: true); throw new TimeoutException($"playground.mjs {scenario} ran over 4 minutes"); }
        string printed = await stdout;
        output.WriteLine($"playground.mjs {scenario}: {printed}screenshots in {Screenshots}");
        Assert.True(node.ExitCode == 0, $"playground.mjs {scenario} failed ({node.ExitCode}): {await stderr}\nhost log:\n{host.RecentLog}");
        return JsonDocument.Parse(printed.Trim().Split('\n')[^1]).RootElement;
    }

    // Script errors, CSP refusals and failed loads show in the console; the refused requests a case makes on purpose log the
    // browser's own line for their status.
    public static void AssertNoConsoleErrors(JsonElement page, params string[] allowStatuses) =>
        Assert.DoesNotContain(page.GetProperty("consoleErrors").EnumerateArray().Select(e => e.GetString()!),
            e => !allowStatuses.Any(status => e.Contains($"status of {status} ", StringComparison.Ordinal)));

    // playwright-core from npm (pinned in browser/package-lock.json): unlike the playwright package it downloads no browser.
    // Test classes of one collection run one after another, so one of them installs it.
    private static async Task EnsurePlaywrightAsync()
    {
        if (!Directory.Exists(Path.Combine(Driver, "node_modules", "playwright-core")))
            await FunctionsHostFixture.RunAsync("npm", ["ci", "--no-audit", "--no-fund", "--silent"], Driver);
    }
}
