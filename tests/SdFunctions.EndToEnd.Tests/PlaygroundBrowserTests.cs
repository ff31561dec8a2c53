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
    private Task<JsonElement> RunAsync(string scenario) => PlaygroundDriver.RunAsync(host, scenario, output);

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
        PlaygroundDriver.AssertNoConsoleErrors(page);
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
        PlaygroundDriver.AssertNoConsoleErrors(page);
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
        PlaygroundDriver.AssertNoConsoleErrors(page, "401", "400");
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
        PlaygroundDriver.AssertNoConsoleErrors(page, "401");
    }
}
