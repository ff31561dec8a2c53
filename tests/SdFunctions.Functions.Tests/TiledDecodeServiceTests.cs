using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SdFunctions.Jobs;

namespace SdFunctions.Functions.Tests;

/// <summary>"tiledDecode": the full VAE decodes tile by tile (tiles of Model:DecodeTileSize), and the output says so.</summary>
[Collection(AzuriteCollection.Name)]
public class TiledDecodeServiceTests
{
    private static JsonElement Body(ContentResult r) => JsonDocument.Parse(r.Content!).RootElement;

    [Fact]
    public async Task ATiledJobDecodesInTilesOfTheConfiguredSizeAndSaysSo()
    {
        await using var app = await TestApp.StartAsync(configure: s => s["Model:DecodeTileSize"] = "128");
        var (tiled, _) = await app.SubmitAsync("""{"prompt": "a fox", "steps": 2, "seed": 4, "scheduler": "ddim", "tiledDecode": true}""");
        var (whole, _) = await app.SubmitAsync("""{"prompt": "a fox", "steps": 2, "seed": 4, "scheduler": "ddim"}""");
        await app.RunNextMessageAsync();
        await app.RunNextMessageAsync();

        var tiledJob = Body(await app.GetAsync(Body(tiled).GetProperty("id").GetString()!));
        var wholeJob = Body(await app.GetAsync(Body(whole).GetProperty("id").GetString()!));
        Assert.Equal(("succeeded", "succeeded"), (tiledJob.GetProperty("status").GetString(), wholeJob.GetProperty("status").GetString()));
        Assert.True(tiledJob.GetProperty("input").GetProperty("tiledDecode").GetBoolean());
        Assert.Equal(128, tiledJob.GetProperty("output").GetProperty("decodeTileSize").GetInt32());
        Assert.False(wholeJob.GetProperty("output").TryGetProperty("decodeTileSize", out _));

        // The same latents (same seed), decoded two ways: the images differ at the seams only.
        var a = (await app.Images.GetBlobClient($"{tiledJob.GetProperty("id").GetString()}.png").DownloadContentAsync()).Value.Content.ToArray();
        var b = (await app.Images.GetBlobClient($"{wholeJob.GetProperty("id").GetString()}.png").DownloadContentAsync()).Value.Content.ToArray();
        Assert.NotEqual(a, b);
    }

    [Theory]
    [InlineData("""{"prompt": "x", "tiledDecode": true, "decoder": "tiny"}""", "tiledDecode")]
    [InlineData("""{"prompt": "x", "tiledDecode": "yes"}""", "tiledDecode")]
    public async Task TiledDecodeMistakesAre400s(string body, string field)
    {
        await using var app = await TestApp.StartAsync();
        var (result, _) = await app.SubmitAsync(body);
        FlowTests.AssertProblem(result, 400, ProblemTypes.Validation);
        Assert.True(Body(result).GetProperty("errors").TryGetProperty(field, out _), Body(result).GetRawText());
    }

    [Fact]
    public void ABadTileSizeSettingStopsTheAppAtStart()
    {
        var app = new TestApp(configure: s => s["Model:DecodeTileSize"] = "100");
        var e = Assert.Throws<OptionsValidationException>(() => app.Services.GetRequiredService<IOptions<SdFunctions.Jobs.ModelOptions>>().Value);
        Assert.Contains("Model:DecodeTileSize", e.Message);
    }
}
