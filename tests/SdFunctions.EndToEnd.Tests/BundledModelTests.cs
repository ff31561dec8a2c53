using System.Text.Json;
using SdFunctions.Inference.Quality;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>The app as a newcomer first runs it: the bundled tiny-shapes model (shared/models/tiny-shapes) at its native 64×64.</summary>
public sealed class BundledModelHostFixture : FunctionsHostFixture
{
    protected override string ModelDirectory => Path.Combine(RepoRoot(), "shared", "models", "tiny-shapes");
    public override int ImageSize => 64;
}

/// <summary>Under the real host, over HTTP and in the playground: the pictures are what their captions say, read back by the judge.</summary>
[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class BundledModelTests(BundledModelHostFixture host, Xunit.Abstractions.ITestOutputHelper output) : HostClient(host), IClassFixture<BundledModelHostFixture>
{
    private readonly BundledModelHostFixture host = host;

    private static ShapeVerdict Judge(byte[] png)
    {
        using var image = Image.Load<Rgb24>(png);
        var rgb = new byte[image.Width * image.Height * 3];
        image.CopyPixelDataTo(rgb);
        return ShapeJudge.Judge(rgb, image.Width, image.Height);
    }

    [Fact]
    public async Task AJobForACaptionDrawsItWithTheModelsDefaults()
    {
        var health = await JsonAsync(await host.Http.GetAsync(Api("health", key: false)));
        Assert.Equal(3.0, health.GetProperty("defaults").GetProperty("guidanceScale").GetDouble()); // from the model card
        Assert.Contains("a red circle on a blue background", health.GetProperty("examplePrompts").EnumerateArray().Select(e => e.GetString()));

        string id = await SubmitIdAsync("""{"prompt": "a red square on a white background", "seed": 2}""");
        var done = await WaitAsync(id, Finished);
        Assert.Equal("succeeded", Status(done));
        Assert.Equal((64, 64, 3.0), (done.GetProperty("output").GetProperty("width").GetInt32(), done.GetProperty("output").GetProperty("height").GetInt32(),
            done.GetProperty("output").GetProperty("guidanceScale").GetDouble()));
        var verdict = Judge(await host.Http.GetByteArrayAsync(Api($"generations/{id}/image")));
        Assert.True(verdict.Matches(new ShapesCaption("red", "square", "white")), $"read as a {verdict.Colour} {verdict.Kind} on {verdict.Background}");
    }

    [Fact]
    public async Task ThePlaygroundOffersTheCardsPromptsAndShowsTheSmallImageLarger()
    {
        var page = await PlaygroundDriver.RunAsync(host, "examples", output);
        string[] examples = [.. page.GetProperty("examples").EnumerateArray().Select(e => e.GetString()!)];
        Assert.Equal(6, examples.Length);
        Assert.Equal(examples[0], page.GetProperty("prompt").GetString()); // a click filled the prompt
        Assert.Equal(examples[0], page.GetProperty("placeholder").GetString());
        var image = page.GetProperty("image");
        Assert.Equal(64, image.GetProperty("naturalWidth").GetInt32());
        Assert.Equal(256, image.GetProperty("shownWidth").GetDouble(), 1);
        Assert.Equal("pixelated", image.GetProperty("rendering").GetString());
        Assert.Contains("guidance 3 ·", page.GetProperty("caption").GetString());
        var caption = ShapesCaption.TryParse(examples[0])!;
        var verdict = Judge(File.ReadAllBytes(page.GetProperty("download").GetString()!));
        Assert.True(verdict.Matches(caption), $"{caption} read as a {verdict.Colour} {verdict.Kind} on {verdict.Background}");
        PlaygroundDriver.AssertNoConsoleErrors(page);
    }
}
