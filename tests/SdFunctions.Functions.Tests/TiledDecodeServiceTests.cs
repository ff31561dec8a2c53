using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>"tiledDecode": the full VAE decodes tile by tile (tiles of Model:DecodeTileSize), and the output says so.</summary>
[Collection(AzuriteCollection.Name)]
public class TiledDecodeServiceTests
{
    [Fact]
    public async Task ATiledJobDecodesInTilesOfTheConfiguredSizeAndSaysSo()
    {
        await using var app = await TestApp.StartAsync(configure: s => s["Model:DecodeTileSize"] = "128");
        var tiledJob = await app.RunJobAsync("""{"prompt": "a fox", "steps": 2, "seed": 4, "scheduler": "ddim", "tiledDecode": true}""");
        var wholeJob = await app.RunJobAsync("""{"prompt": "a fox", "steps": 2, "seed": 4, "scheduler": "ddim"}""");
        Assert.Equal(("succeeded", "succeeded"), (tiledJob.GetProperty("status").GetString(), wholeJob.GetProperty("status").GetString()));
        Assert.True(tiledJob.GetProperty("input").GetProperty("tiledDecode").GetBoolean());
        Assert.Equal(128, tiledJob.GetProperty("output").GetProperty("decodeTileSize").GetInt32());
        Assert.False(wholeJob.GetProperty("output").TryGetProperty("decodeTileSize", out _));

        // The same latents (same seed), decoded two ways: the images differ at the seams only.
        var a = await app.ImageBytesAsync(tiledJob.GetProperty("id").GetString()!);
        var b = await app.ImageBytesAsync(wholeJob.GetProperty("id").GetString()!);
        Assert.NotEqual(a, b);
    }

    [Theory]
    [InlineData("""{"prompt": "x", "tiledDecode": true, "decoder": "tiny"}""", "tiledDecode")]
    [InlineData("""{"prompt": "x", "tiledDecode": "yes"}""", "tiledDecode")]
    public async Task TiledDecodeMistakesAre400s(string body, string field)
    {
        await using var app = await TestApp.StartAsync();
        AssertFieldRefused((await app.SubmitAsync(body)).Result, field);
    }

    [Fact]
    public void ABadTileSizeSettingStopsTheAppAtStart()
    {
        var app = new TestApp(configure: s => s["Model:DecodeTileSize"] = "100");
        var e = Assert.Throws<OptionsValidationException>(() => app.Services.GetRequiredService<IOptions<SdFunctions.Jobs.ModelOptions>>().Value);
        Assert.Contains("Model__DecodeTileSize", e.Message);
    }
}
