using System.Diagnostics;
using System.Text.Json;
using SixLabors.ImageSharp;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>
/// The playground page in a real browser: Debian's chromium driven by playwright-core (browser/playground.mjs) against the
/// app under the real Functions host. Each case runs one scenario of the script and asserts on what the page showed;
/// screenshots of each state go to tests/SdFunctions.EndToEnd.Tests/TestResults/playground/ (not committed).
/// </summary>
[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class PlaygroundBrowserTests(FunctionsHostFixture host, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<FunctionsHostFixture>
{
    private static readonly string Driver = Path.Combine(FunctionsHostFixture.RepoRoot(), "tests", "SdFunctions.EndToEnd.Tests", "browser");
    public static readonly string Screenshots = Path.Combine(FunctionsHostFixture.RepoRoot(), "tests", "SdFunctions.EndToEnd.Tests", "TestResults", "playground");
    private const string Chromium = "/usr/bin/chromium";

    [Fact]
    public async Task AKeyAndAPromptGiveTheImageAtItsSizeWithADownloadAndAHistoryEntryThatReopensIt()
    {
        var page = await RunAsync("generate");
        var image = page.GetProperty("image");
        // The host serves 256×256 (the fixture's Jobs__Width/Height): the image shown is the job's, at its natural size.
        Assert.Equal((256, 256), (image.GetProperty("naturalWidth").GetInt32(), image.GetProperty("naturalHeight").GetInt32()));
        Assert.True(image.GetProperty("visible").GetBoolean());
        Assert.Equal("Generated image: a lighthouse at dusk, oil painting", image.GetProperty("alt").GetString());
        Assert.Equal("Succeeded", page.GetProperty("status").GetString());
        Assert.Equal("step 12 of 12", page.GetProperty("progress").GetString());
        Assert.StartsWith("Seed 7 · ddim, 12 steps, guidance 7.5 · 256×256 · ", page.GetProperty("caption").GetString());

        // The download link saves the PNG the API serves.
        string saved = page.GetProperty("download").GetProperty("path").GetString()!;
        Assert.Matches("^sdfunctions-[0-9a-f]{32}\\.png$", page.GetProperty("download").GetProperty("file").GetString());
        using (var png = Image.Load(saved)) Assert.Equal((256, 256), (png.Width, png.Height));

        // The key stays in the tab's session storage: never in the URL or the (lasting) local storage.
        Assert.True(page.GetProperty("keyInSessionStorage").GetBoolean());
        Assert.False(page.GetProperty("keyInUrl").GetBoolean());
        Assert.False(page.GetProperty("keyInLocalStorage").GetBoolean());

        var history = page.GetProperty("historyAfterReload").EnumerateArray().ToList();
        Assert.Single(history);
        Assert.Contains("a lighthouse at dusk, oil painting", history[0].GetProperty("text").GetString());
        Assert.Contains("succeeded", history[0].GetProperty("text").GetString());
        Assert.Equal("data:image/jpeg;base64,", history[0].GetProperty("thumbnail").GetString());
        Assert.Equal("Succeeded", page.GetProperty("reopened").GetProperty("status").GetString());
        Assert.Equal(256, page.GetProperty("reopened").GetProperty("naturalWidth").GetInt32());
        AssertNoConsoleErrors(page);
    }

    [Fact]
    public async Task CancelingFromThePageEndsTheJobCanceled()
    {
        var page = await RunAsync("cancel");
        Assert.Matches("^Running: step [0-9]+ of 150$", page.GetProperty("statusBeforeCancel").GetString());
        Assert.Equal("Canceled", page.GetProperty("status").GetString());
        Assert.True(page.GetProperty("resultHidden").GetBoolean());
        Assert.True(page.GetProperty("cancelDisabled").GetBoolean());
        Assert.True(page.GetProperty("problemHidden").GetBoolean());
        AssertNoConsoleErrors(page);
    }

    [Fact]
    public async Task SubmittingWithoutAKeyExplainsTheHostsBareUnauthorizedAndARefusedRequestShowsItsProblem()
    {
        var page = await RunAsync("nokey");
        Assert.Equal("Function key needed (401 Unauthorized)", page.GetProperty("title").GetString());
        Assert.Contains("Paste one into “Function key”", page.GetProperty("detail").GetString());
        Assert.False(page.GetProperty("jobShown").GetBoolean());

        var invalid = page.GetProperty("invalid");
        Assert.Equal("Invalid request", invalid.GetProperty("title").GetString());
        Assert.Equal(["steps: Between 1 and 150."], invalid.GetProperty("errors").EnumerateArray().Select(e => e.GetString()!));
        Assert.False(invalid.GetProperty("jobShown").GetBoolean());
        AssertNoConsoleErrors(page, "401", "400");
    }

    [Fact]
    public async Task At360PixelsWideEveryControlIsLabelledAndTheKeyboardReachesThemInOrder()
    {
        var page = await RunAsync("narrow");
        Assert.Empty(page.GetProperty("unlabelled").EnumerateArray());
        Assert.True(page.GetProperty("scrollWidth").GetInt32() <= 360, $"the page scrolls sideways at 360 px: {page.GetProperty("scrollWidth")} px wide");
        Assert.Equal(["key", "prompt", "negative", "steps", "guidance", "scheduler", "seed", "decoder", "submit"],
            page.GetProperty("order").EnumerateArray().Select(e => e.GetString()!));
        Assert.Equal("Function key needed (401 Unauthorized)", page.GetProperty("problemTitle").GetString()); // Enter on Generate submitted
        AssertNoConsoleErrors(page, "401");
    }

    // Script errors, CSP refusals and failed loads show in the console; the refused requests a case makes on purpose log the
    // browser's own line for their status.
    private static void AssertNoConsoleErrors(JsonElement page, params string[] allowStatuses) =>
        Assert.DoesNotContain(page.GetProperty("consoleErrors").EnumerateArray().Select(e => e.GetString()!),
            e => !allowStatuses.Any(status => e.Contains($"status of {status} ", StringComparison.Ordinal)));

    /// <summary>Runs one scenario of browser/playground.mjs against the host and returns what it printed.</summary>
    private async Task<JsonElement> RunAsync(string scenario)
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

    // playwright-core from npm (pinned in browser/package-lock.json): unlike the playwright package it downloads no browser.
    // The cases of one class run one after another, so one of them installs it.
    private static async Task EnsurePlaywrightAsync()
    {
        if (!Directory.Exists(Path.Combine(Driver, "node_modules", "playwright-core")))
            await FunctionsHostFixture.RunAsync("npm", ["ci", "--no-audit", "--no-fund", "--silent"], Driver);
    }
}
